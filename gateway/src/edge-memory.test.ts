import { readFileSync } from 'node:fs';
import { request } from 'node:http';
import { freePortRange } from '@dsm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Stack, startStack } from './test-support.ts';

// The gateway runs as its own process (as `dsm up` starts it), so its resident memory is its
// own: /proc/<pid>/status, sampled while the form streams in.

const MiB = 1024 * 1024;
const FIELDS = 30_000;
const NAME_BYTES = 3000;

let stack: Stack;
let gwPort: number;
let pid: number;

beforeAll(async () => {
  gwPort = await freePortRange(1);
  stack = await startStack('sqlite+memory', {}, { gateways: 1, gatewayBasePort: gwPort });
  pid = stack.cluster.nodes.get('gateway1')?.pid as number;
  expect(pid).toBeGreaterThan(0);
}, 120_000);

afterAll(async () => {
  await stack?.stop();
}, 60_000);

function memory(): { rss: number; hwm: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1]) * 1024;
  return { rss: kib('VmRSS'), hwm: kib('VmHWM') };
}

/** 30,000 empty fields with 3000-byte names, then a file part: about 90 MB, sent chunked. */
function* form(boundary: string): Generator<Buffer> {
  const name = 'n'.repeat(NAME_BYTES - 6);
  let batch: string[] = [];
  for (let i = 0; i < FIELDS; i++) {
    batch.push(
      `--${boundary}\r\nContent-Disposition: form-data; name="${name}${String(i).padStart(6, '0')}"\r\n\r\n\r\n`,
    );
    if (batch.length === 100) {
      yield Buffer.from(batch.join(''));
      batch = [];
    }
  }
  yield Buffer.from(
    `${batch.join('')}--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\nhello\r\n--${boundary}--\r\n`,
  );
}

describe('multipart caps', () => {
  it('answers 30,000 empty fields with long names with a 413 problem, the gateway growing < 20 MiB', async () => {
    // settle: a first request (JIT, pools), then the baseline
    await fetch(`http://127.0.0.1:${gwPort}/healthz`).then((r) => r.text());
    global.gc?.();
    await new Promise((r) => setTimeout(r, 500));
    const before = memory();
    let peak = before.rss;
    const sampler = setInterval(() => {
      peak = Math.max(peak, memory().rss);
    }, 10);

    const boundary = 'dsm-test-boundary-7Hq2';
    const reply = await new Promise<{ status: number; type: string; body: string; sent: number }>(
      (resolve, reject) => {
        let sent = 0;
        let answered = false;
        const req = request({
          host: '127.0.0.1',
          port: gwPort,
          method: 'POST',
          path: '/files',
          headers: { 'Content-Type': `multipart/form-data; boundary=${boundary}` },
        });
        req.on('response', (res) => {
          answered = true;
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (d) => {
            body += d;
          });
          res.on('end', () => {
            resolve({
              status: res.statusCode ?? 0,
              type: String(res.headers['content-type']),
              body,
              sent,
            });
            req.destroy();
          });
        });
        req.on('error', (e) => {
          if (!answered) reject(e);
        });
        const chunks = form(boundary);
        const pump = () => {
          for (;;) {
            if (answered || req.destroyed) return;
            const n = chunks.next();
            if (n.done) {
              req.end();
              return;
            }
            sent += n.value.length;
            if (!req.write(n.value)) {
              req.once('drain', pump);
              return;
            }
          }
        };
        pump();
      },
    );
    await new Promise((r) => setTimeout(r, 300));
    clearInterval(sampler);
    const after = memory();
    if (after.hwm > before.hwm) peak = Math.max(peak, after.hwm);
    const grew = peak - before.rss;
    console.log(
      `gateway RSS ${(before.rss / MiB).toFixed(1)} MiB before, peak ${(peak / MiB).toFixed(1)} MiB ` +
        `(+${(grew / MiB).toFixed(1)} MiB); ${(reply.sent / MiB).toFixed(1)} MiB of the form sent ` +
        `before the answer ${reply.status}`,
    );
    expect(reply.status).toBe(413);
    expect(reply.type).toBe('application/problem+json');
    expect(JSON.parse(reply.body)).toMatchObject({ status: 413, code: 'DSM_ERR_TOO_LARGE' });
    expect(grew).toBeLessThan(20 * MiB);
    // and the gateway still serves
    expect((await fetch(`http://127.0.0.1:${gwPort}/healthz`)).status).toBe(200);
  }, 120_000);
});
