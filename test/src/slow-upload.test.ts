/**
 * An upload that takes longer than `ioTimeoutMs` while its bytes keep flowing (a phone on a slow
 * link) must not time out: the timeout counts silence, not the length of the upload. Through the
 * client library and through the gateway, against a real cluster.
 */
import { request } from 'node:http';
import { DsmClient } from '@dsm/client';
import { nodeTransport } from '@dsm/client/node';
import type { RunningGateway } from '@dsm/gateway/node';
import { parseAddress } from '@dsm/packets';
import { patternBytes } from '@dsm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestCluster, startUncachedGateway, type TestCluster } from './helpers.ts';

const IO_TIMEOUT_MS = 500;
const CHUNK = 16 * 1024;
const CHUNKS = 12;
const EVERY_MS = 150; // 12 chunks × 150 ms ≈ 1.8 s, well past the 500 ms timeout

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const data = patternBytes(CHUNK * CHUNKS, 7);

async function* slowly(): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < CHUNKS; i++) {
    await sleep(EVERY_MS);
    yield data.subarray(i * CHUNK, (i + 1) * CHUNK);
  }
}

describe('an upload slower than ioTimeoutMs whose bytes keep flowing', () => {
  let t: TestCluster;
  let gw: RunningGateway;
  beforeAll(async () => {
    t = await startTestCluster('sqlite+memory', { trackers: 1, groups: ['group001'], storagesPerGroup: 1 });
    await t.waitActive();
    gw = await startUncachedGateway(t, { ioTimeoutMs: IO_TIMEOUT_MS });
  }, 60_000);
  afterAll(async () => {
    await gw?.close();
    await t?.stop();
  });
  const slowClient = () =>
    new DsmClient({
      trackers: t.cluster.addresses('tracker').map(parseAddress),
      transport: nodeTransport,
      locateCacheMs: 0,
      ioTimeoutMs: IO_TIMEOUT_MS,
    });

  it('completes through the client library', async () => {
    const started = Date.now();
    const r = await slowClient().upload({
      appId: 'tnvideo',
      userId: 'slowphone',
      source: { size: data.length, open: slowly, replayable: false },
    });
    expect(Date.now() - started).toBeGreaterThan(3 * IO_TIMEOUT_MS);
    expect(r.stat.size).toBe(data.length);
  });

  it('completes through the gateway (POST /files)', async () => {
    const started = Date.now();
    const { status, body } = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = request(
        `${gw.url}/files`,
        { method: 'POST', headers: { 'content-type': 'video/mp4', 'content-length': String(data.length) } },
        (res) => {
          let b = '';
          res.setEncoding('utf8');
          res.on('data', (c) => {
            b += c;
          });
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body: b }));
        },
      );
      req.on('error', reject);
      (async () => {
        for await (const c of slowly()) req.write(c);
        req.end();
      })().catch(reject);
    });
    expect(status, body).toBe(201);
    expect(Date.now() - started).toBeGreaterThan(3 * IO_TIMEOUT_MS);
    const { id } = JSON.parse(body) as { id: string };
    const back = Buffer.from(await (await fetch(`${gw.url}/files/${id}`)).arrayBuffer());
    expect(back.equals(data)).toBe(true);
  });

  it('still times out a storage that stops answering after the body (silence is bounded)', async () => {
    // a server that takes the whole request and never answers
    const { createServer } = await import('node:net');
    const server = createServer((s) => s.resume());
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as { port: number }).port;
    try {
      const started = Date.now();
      const e = await slowClient()
        .storage.uploadExt(
          { host: '127.0.0.1', port },
          { appId: 'tnvideo', userId: 'u', fileId: 'f' },
          'x/y',
          {
            size: 4,
            open: async function* () {
              yield new Uint8Array(4);
            },
          },
        )
        .catch((x: unknown) => x);
      expect(e).toMatchObject({ code: 'DSM_ERR_TIMEOUT' });
      expect(Date.now() - started).toBeLessThan(IO_TIMEOUT_MS * 4);
    } finally {
      server.close();
    }
  });
});
