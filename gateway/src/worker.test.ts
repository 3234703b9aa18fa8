import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Miniflare } from 'miniflare';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  buildWorker,
  compatibilityDate,
  patternBytes,
  type Stack,
  startStack,
  wranglerToml,
} from './test-support.ts';

// The Worker entry, built by wrangler exactly as `wrangler deploy` would (offline, --dry-run),
// then run in Miniflare (workerd) against a real local cluster: its `cloudflare:sockets`
// transport talks to the trackers and storages on 127.0.0.1.

const KiB = 1024;
const MiB = 1024 * KiB;
const TUS = { 'Tus-Resumable': '1.0.0' };
const ADMIN_TOKEN = 'worker-admin-token-0123456789abcdef';
const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

let out: string;
let s: Stack;
let mf: Miniflare;
let base: string;

beforeAll(async () => {
  out = mkdtempSync(join(tmpdir(), 'dsm-worker-'));
  const [, stack] = await Promise.all([
    buildWorker(out),
    startStack('sqlite+memory', {}, { storagesPerGroup: 2 }),
  ]);
  s = stack;
  const date = compatibilityDate();
  mf = new Miniflare({
    modules: true,
    scriptPath: join(out, 'worker.js'),
    modulesRoot: out,
    compatibilityDate: date,
    compatibilityFlags: ['nodejs_compat'],
    host: '127.0.0.1',
    port: 0,
    bindings: {
      DSM_TRACKERS: s.cluster.addresses('tracker').join(','),
      DSM_LOG_LEVEL: 'error',
      DSM_ADMIN_TOKEN: ADMIN_TOKEN,
      DSM_GATEWAY: {
        // a Worker is public: mode none must be asked for
        auth: { allowAnonymousUploads: true },
        statCacheMs: 0,
        locateCacheMs: 0,
        uploadBlockBytes: 256 * KiB,
        maxUploadBytes: 64 * MiB,
        // an interrupted PATCH ends the Worker's request before it can unlock; the lock lapses
        tusLockTtlMs: 1000,
      },
    },
  });
  base = (await mf.ready).toString().replace(/\/$/, '');
}, 90_000);

afterAll(async () => {
  await mf?.dispose();
  await s?.stop();
  if (out) rmSync(out, { recursive: true, force: true });
});

describe('wrangler build', () => {
  it('builds the Worker with `wrangler deploy --dry-run` (no account, offline)', () => {
    const bundle = join(out, 'worker.js');
    expect(existsSync(bundle)).toBe(true);
    expect(statSync(bundle).size).toBeGreaterThan(10 * KiB);
    const code = readFileSync(bundle, 'utf8');
    // the only runtime module it needs is the sockets API (no Node-only code slipped in)
    // (minified: `import{connect as x}from"cloudflare:sockets";` anywhere on a line)
    const imports = [...code.matchAll(/(?:^|[;\n])\s*import\s*(?:[^;"'()]*?\s*from\s*)?"([^"]+)"/g)].map(
      (m) => m[1],
    );
    expect(imports).toEqual(['cloudflare:sockets']);
    const toml = wranglerToml();
    const date = compatibilityDate();
    expect(date >= '2024-09-23' && date <= '2026-04-26').toBe(true);
    expect(toml).toMatch(/^compatibility_flags\s*=\s*\["nodejs_compat"\]/m);
  });
});

describe('the Worker in Miniflare against a real cluster', () => {
  it('answers health and readiness through cloudflare:sockets', async () => {
    expect((await fetch(`${base}/healthz`)).status).toBe(200);
    // the public answer is only ready / not ready; the details need the admin token
    const pub = await fetch(`${base}/readyz`);
    expect(pub.status).toBe(200);
    expect(await pub.json()).toEqual({ status: 'ready' });
    const r = await fetch(`${base}/readyz`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    expect(r.status).toBe(200);
    expect(((await r.json()) as { trackers: { ok: boolean }[] }).trackers.every((t) => t.ok)).toBe(true);
  });

  it('uploads with POST and downloads whole (Content-Length) and by range (206)', async () => {
    const data = patternBytes(3 * MiB + 77, 31);
    const up = await fetch(`${base}/files?filename=clip.mp4`, {
      method: 'POST',
      body: data,
      headers: { 'content-type': 'video/mp4' },
    });
    expect(up.status).toBe(201);
    const reply = (await up.json()) as { id: string; url: string; size: number; sha256: string };
    expect(reply).toMatchObject({ size: data.length, sha256: sha256(data) });
    expect(reply.url).toBe(`${base}/files/${reply.id}`);

    // read-after-write on the Node gateway too: the file is committed on the storages
    expect((await fetch(`${s.gateway.url}/files/${reply.id}`, { method: 'HEAD' })).status).toBe(200);

    const whole = await fetch(reply.url);
    expect(whole.status).toBe(200);
    // FixedLengthStream: a length, not chunked encoding
    expect(whole.headers.get('content-length')).toBe(String(data.length));
    expect(whole.headers.get('accept-ranges')).toBe('bytes');
    expect(Buffer.from(await whole.arrayBuffer()).equals(data)).toBe(true);

    const from = 1 * MiB + 5;
    const to = 2 * MiB + 1000;
    const part = await fetch(`${reply.url}/clip.mp4`, { headers: { Range: `bytes=${from}-${to}` } });
    expect(part.status).toBe(206);
    expect(part.headers.get('content-range')).toBe(`bytes ${from}-${to}/${data.length}`);
    expect(part.headers.get('content-length')).toBe(String(to - from + 1));
    expect(part.headers.get('content-type')).toBe('video/mp4');
    expect(Buffer.from(await part.arrayBuffer()).equals(data.subarray(from, to + 1))).toBe(true);

    const suffix = await fetch(reply.url, { headers: { Range: 'bytes=-100' } });
    expect(suffix.status).toBe(206);
    expect(Buffer.from(await suffix.arrayBuffer()).equals(data.subarray(data.length - 100))).toBe(true);

    const bad = await fetch(reply.url, { headers: { Range: `bytes=${data.length}-` } });
    expect(bad.status).toBe(416);
    expect(bad.headers.get('content-range')).toBe(`bytes */${data.length}`);
    expect(bad.headers.get('content-type')).toBe('application/problem+json');
  });

  it('takes a chunked body of unknown length (block-wise resumable upload on the storage)', async () => {
    const data = patternBytes(700 * KiB + 3, 32);
    const r = await fetch(`${base}/files`, {
      method: 'POST',
      body: new Blob([data]).stream(),
      duplex: 'half',
    } as RequestInit);
    expect(r.status).toBe(201);
    const reply = (await r.json()) as { url: string; sha256: string };
    expect(reply.sha256).toBe(sha256(data));
    expect(Buffer.from(await (await fetch(reply.url)).arrayBuffer()).equals(data)).toBe(true);
  });

  it('resumes a tus upload after an interrupted PATCH; the file comes back byte-equal', async () => {
    const data = patternBytes(4 * MiB + 123, 33);
    const created = await fetch(`${base}/tus/`, {
      method: 'POST',
      headers: {
        ...TUS,
        'Upload-Length': String(data.length),
        'Upload-Metadata': `filename ${Buffer.from('movie.mp4').toString('base64')}`,
      },
    });
    expect(created.status).toBe(201);
    const url = created.headers.get('location') as string;
    expect(url.startsWith(`${base}/tus/`)).toBe(true);
    const path = new URL(url).pathname;

    const patch = (offset: number, body: Uint8Array) =>
      fetch(url, {
        method: 'PATCH',
        headers: {
          ...TUS,
          'Upload-Offset': String(offset),
          'Content-Type': 'application/offset+octet-stream',
        },
        body: body as Uint8Array<ArrayBuffer>,
      });
    const offsetOf = async () => {
      const h = await fetch(url, { method: 'HEAD', headers: TUS });
      expect(h.status).toBe(200);
      return Number(h.headers.get('upload-offset'));
    };

    // 1. a first PATCH goes through
    const first = 512 * KiB;
    const p1 = await patch(0, data.subarray(0, first));
    expect(p1.status).toBe(204);
    expect(p1.headers.get('upload-offset')).toBe(String(first));

    // 2. a PATCH for all the rest, cut off after ~1 MiB while it is in flight
    const port = Number(new URL(base).port);
    const sock = connect(port, '127.0.0.1');
    await new Promise<void>((r, j) => sock.once('connect', r).once('error', j));
    sock.on('error', () => {});
    sock.write(
      `PATCH ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nTus-Resumable: 1.0.0\r\n` +
        `Upload-Offset: ${first}\r\nContent-Type: application/offset+octet-stream\r\n` +
        `Content-Length: ${data.length - first}\r\n\r\n`,
    );
    let sent = first;
    while (sent < first + 1 * MiB) {
      sock.write(data.subarray(sent, sent + 64 * KiB));
      sent += 64 * KiB;
      await new Promise((r) => setTimeout(r, 5));
    }
    // wait until bytes of this PATCH reached the storage, then cut the connection
    const deadline = Date.now() + 10_000;
    while ((await offsetOf()) <= first && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    sock.destroy();

    // 3. the offset settles at what the storage kept
    let offset = -1;
    for (let i = 0; i < 60; i++) {
      await new Promise((r) => setTimeout(r, 100));
      const now = await offsetOf();
      if (now === offset) break;
      offset = now;
    }
    expect(offset).toBeGreaterThan(first);
    expect(offset).toBeLessThan(data.length);

    // a PATCH at a stale offset is refused
    const stale = await patch(first, data.subarray(first, first + 10));
    expect([409, 423]).toContain(stale.status);

    // 4. resume from the storage's offset (retrying while the torn request's lock lapses)
    let done: Response | undefined;
    for (let i = 0; i < 40; i++) {
      done = await patch(offset, data.subarray(offset));
      if (done.status !== 423) break;
      await new Promise((r) => setTimeout(r, 150));
    }
    expect(done?.status).toBe(204);
    expect(done?.headers.get('upload-offset')).toBe(String(data.length));
    const id = done?.headers.get('dsm-file-id') as string;
    expect(url.endsWith(`/tus/${id}`)).toBe(true);

    // 5. the upload URL now serves the file, and so does /files/:id
    const back = await fetch(url);
    expect(back.status).toBe(200);
    expect(back.headers.get('content-length')).toBe(String(data.length));
    expect(sha256(Buffer.from(await back.arrayBuffer()))).toBe(sha256(data));
    const range = await fetch(`${base}/files/${id}`, { headers: { Range: 'bytes=1000-1999' } });
    expect(range.status).toBe(206);
    expect(Buffer.from(await range.arrayBuffer()).equals(data.subarray(1000, 2000))).toBe(true);
  });
});

describe('a misconfigured Worker', () => {
  it('answers every request with a 500 problem naming the bad key', async () => {
    const r = await mf.dispatchFetch('http://gw.test/healthz', { method: 'GET' });
    expect(r.status).toBe(200);
    await r.arrayBuffer();
    await mf.setOptions({
      modules: true,
      scriptPath: join(out, 'worker.js'),
      modulesRoot: out,
      compatibilityDate: '2026-04-26',
      compatibilityFlags: ['nodejs_compat'],
      bindings: { DSM_GATEWAY: { statCacheMs: 'soon' } },
    });
    const bad = await mf.dispatchFetch('http://gw.test/healthz');
    expect(bad.status).toBe(500);
    expect(bad.headers.get('content-type')).toBe('application/problem+json');
    const p = (await bad.json()) as { code: string; detail: string };
    expect(p.code).toBe('DSM_ERR_CONFIG');
    expect(p.detail).toMatch(/config key "statCacheMs"/);
  });
});
