import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { type AddressInfo, connect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import { kvConformance } from '@dsm/kv/test-conformance';
import { Miniflare, type MiniflareOptions } from 'miniflare';
import { Upload } from 'tus-js-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  boundedText,
  DEFAULT_DURABLE_KV_LIMITS,
  DurableKvStore,
  type DurableObjectNamespaceLike,
} from './durable-kv.ts';
import {
  buildWorker,
  compatibilityDate,
  patternBytes,
  type Stack,
  startStack,
  wranglerToml,
} from './test-support.ts';
import { tusKeys } from './tus.ts';

// The Worker with its tus state in the Durable Object of wrangler.toml (durable-kv.ts), built by
// `wrangler deploy --dry-run` and run in Miniflare against a real local cluster.
//
// Two Workers share only the Durable Object namespace: A and B are two Miniflare instances (two
// workerd processes, so two isolates with nothing else in common). A hosts the objects (SQLite
// files in a temp folder); B's binding names A's script (`scriptName`) and reaches the same live
// objects through Miniflare's dev registry, as wrangler dev does across sessions. (Two instances
// that merely point `durableObjectsPersist` at one folder do not share objects: each runs its
// own instance of an object over the same SQLite file, which is not how Durable Objects work.)
// C is a third Worker with a short tus expiry and tiny object bounds.

const KiB = 1024;
const MiB = 1024 * KiB;
const TUS = { 'Tus-Resumable': '1.0.0' };
const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let out: string;
let scratch: string;
let s: Stack;
let mfA: Miniflare;
let mfB: Miniflare;
let mfC: Miniflare;
let a: string;
let b: string;
let c: string;
let className: string;
const C_LIMITS = {
  shards: 1,
  maxKeyBytes: 256,
  maxValueBytes: 4096,
  maxKeysPerObject: 16,
  requestTimeoutMs: 2000,
};

/** Worker B's `durable object call` debug lines (`<op> <object kind>`), as they arrive. */
const bCalls: string[] = [];

function workerOptions(name: string, gateway: Record<string, unknown>, logLevel = 'error'): MiniflareOptions {
  return {
    name,
    modules: true,
    scriptPath: join(out, 'worker.js'),
    modulesRoot: out,
    compatibilityDate: compatibilityDate(),
    compatibilityFlags: ['nodejs_compat'],
    host: '127.0.0.1',
    port: 0,
    unsafeDevRegistryPath: join(scratch, 'registry'),
    bindings: {
      DSM_TRACKERS: s.cluster.addresses('tracker').join(','),
      DSM_LOG_LEVEL: logLevel,
      DSM_GATEWAY: {
        auth: { allowAnonymousUploads: true },
        statCacheMs: 0,
        locateCacheMs: 0,
        uploadBlockBytes: 256 * KiB,
        maxUploadBytes: 64 * MiB,
        // an interrupted PATCH ends the Worker's request before it can unlock; the lock lapses
        tusLockTtlMs: 1000,
        ...gateway,
      },
    },
  };
}

beforeAll(async () => {
  out = mkdtempSync(join(tmpdir(), 'dsm-worker-do-'));
  scratch = mkdtempSync(join(tmpdir(), 'dsm-worker-do-state-'));
  const [, stack] = await Promise.all([
    buildWorker(out),
    startStack('sqlite+memory', {}, { storagesPerGroup: 2 }),
  ]);
  s = stack;
  // the binding and the class as wrangler.toml declares them
  const toml = wranglerToml();
  const binding = /\[\[durable_objects\.bindings\]\]\s*name\s*=\s*"(\w+)"\s*class_name\s*=\s*"(\w+)"/.exec(
    toml,
  );
  expect(binding?.[1]).toBe('DSM_TUS');
  className = binding?.[2] as string;
  expect(toml).toMatch(new RegExp(`new_sqlite_classes\\s*=\\s*\\["${className}"\\]`));

  mfA = new Miniflare({
    ...workerOptions('dsm-gateway-a', {}),
    durableObjects: { DSM_TUS: { className, useSQLite: true } },
    durableObjectsPersist: join(scratch, 'do'),
  });
  a = (await mfA.ready).toString().replace(/\/$/, '');
  mfB = new Miniflare({
    // debug: B logs each of its Durable Object requests (counted below); its own locks last 10 s
    ...workerOptions('dsm-gateway-b', { tusLockTtlMs: 10_000 }, 'debug'),
    durableObjects: { DSM_TUS: { className, scriptName: 'dsm-gateway-a' } },
    handleRuntimeStdio(stdout: Readable) {
      createInterface({ input: stdout }).on('line', (line) => {
        const m = /\{.*"msg":"durable object call".*\}/.exec(line);
        if (!m) return;
        const { op, object } = JSON.parse(m[0]) as { op: string; object: string };
        bCalls.push(`${op} ${object.slice(0, 1)}`);
      });
    },
  });
  mfC = new Miniflare({
    ...workerOptions('dsm-gateway-c', { tusExpiryMs: 1000, durableObject: C_LIMITS }),
    durableObjects: { DSM_TUS: { className, useSQLite: true } },
  });
  b = (await mfB.ready).toString().replace(/\/$/, '');
  c = (await mfC.ready).toString().replace(/\/$/, '');
}, 120_000);

afterAll(async () => {
  await mfB?.dispose();
  await mfC?.dispose();
  await mfA?.dispose();
  await s?.stop();
  for (const d of [out, scratch]) if (d) rmSync(d, { recursive: true, force: true });
});

async function create(base: string, length: number): Promise<string> {
  const r = await fetch(`${base}/tus/`, {
    method: 'POST',
    headers: { ...TUS, 'Upload-Length': String(length) },
  });
  expect(r.status).toBe(201);
  return r.headers.get('location') as string;
}

function patch(url: string, offset: number, body: Uint8Array): Promise<Response> {
  return fetch(url, {
    method: 'PATCH',
    headers: { ...TUS, 'Upload-Offset': String(offset), 'Content-Type': 'application/offset+octet-stream' },
    body: body as Uint8Array<ArrayBuffer>,
  });
}

async function head(url: string): Promise<Response> {
  const r = await fetch(url, { method: 'HEAD', headers: TUS });
  await r.arrayBuffer();
  return r;
}

const on = (url: string, base: string) => `${base}${new URL(url).pathname}`;

describe('tus state in the Durable Object, shared by two Workers', () => {
  it('an upload started through Worker A is resumed and finished through Worker B, byte-equal', async () => {
    const data = patternBytes(3 * MiB + 17, 41);
    const url = await create(a, data.length);
    expect(url.startsWith(`${a}/tus/`)).toBe(true);
    const p1 = await patch(url, 0, data.subarray(0, MiB));
    expect(p1.status).toBe(204);

    // B has never seen this upload in its own memory: what it knows comes from the object
    const h = await head(on(url, b));
    expect(h.status).toBe(200);
    expect(h.headers.get('upload-offset')).toBe(String(MiB));
    expect(h.headers.get('upload-length')).toBe(String(data.length));
    const p2 = await patch(on(url, b), MiB, data.subarray(MiB));
    expect(p2.status).toBe(204);
    expect(p2.headers.get('upload-offset')).toBe(String(data.length));
    const id = p2.headers.get('dsm-file-id') as string;
    expect(url.endsWith(`/tus/${id}`)).toBe(true);

    const back = await fetch(`${a}/files/${id}`);
    expect(back.status).toBe(200);
    expect(sha256(Buffer.from(await back.arrayBuffer()))).toBe(sha256(data));

    // the upload's object gave its storage back once the upload was done
    const ns = (await mfA.getDurableObjectNamespace('DSM_TUS')) as unknown as DurableObjectNamespaceLike;
    const kv = new DurableKvStore(ns, { limits: DEFAULT_DURABLE_KV_LIMITS, group: tusKeys.uploadOf });
    expect(await kv.get(`gw:tus:u:${id}`)).toBeNull();
  });

  it('two PATCHes at once on one upload, through A and B: one is refused with 423 (lock held), the file is byte-equal', async () => {
    const data = patternBytes(2 * MiB + 5, 42);
    const url = await create(a, data.length);
    const path = new URL(url).pathname;
    // PATCH 1 through A, held open half way so its lock is certainly held
    const port = Number(new URL(a).port);
    const sock = connect(port, '127.0.0.1');
    await new Promise<void>((r, j) => sock.once('connect', r).once('error', j));
    let reply = '';
    sock.on('data', (d) => {
      reply += d.toString('latin1');
    });
    sock.write(
      `PATCH ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n` +
        `Content-Type: application/offset+octet-stream\r\nContent-Length: ${data.length}\r\nConnection: close\r\n\r\n`,
    );
    sock.write(data.subarray(0, MiB));
    const deadline = Date.now() + 10_000;
    while (Number((await head(on(url, b))).headers.get('upload-offset')) === 0 && Date.now() < deadline) {
      await sleep(50);
    }
    // PATCH 2 through B while PATCH 1 streams
    const second = await patch(on(url, b), 0, data);
    expect(second.status).toBe(423);
    expect(second.headers.get('retry-after')).toBe('1');
    // PATCH 1 finishes
    sock.write(data.subarray(MiB));
    const until = Date.now() + 20_000;
    while (!reply.includes('\r\n\r\n') && Date.now() < until) await sleep(20);
    sock.destroy();
    expect(reply.split('\r\n')[0]).toBe('HTTP/1.1 204 No Content');
    expect(reply).toMatch(new RegExp(`upload-offset: ${data.length}`, 'i'));
    const id = path.slice(path.lastIndexOf('/') + 1);
    const back = Buffer.from(await (await fetch(`${b}/files/${id}`)).arrayBuffer());
    expect(back.equals(data)).toBe(true);
  });

  it('two PATCHes sent together through A and B: one goes through, the other gets 409 or 423', async () => {
    const data = patternBytes(1 * MiB + 9, 43);
    const url = await create(b, data.length);
    const [r1, r2] = await Promise.all([patch(on(url, a), 0, data), patch(on(url, b), 0, data)]);
    const statuses = [r1.status, r2.status].sort();
    expect(statuses[0]).toBe(204);
    expect([409, 423]).toContain(statuses[1]);
    const id = url.slice(url.lastIndexOf('/') + 1);
    expect(Buffer.from(await (await fetch(`${a}/files/${id}`)).arrayBuffer()).equals(data)).toBe(true);
  });
});

describe('what an upload costs in Durable Object requests (README "What it costs")', () => {
  /** The calls B made during `fn` (its log lines settle for 300 ms before and after). */
  async function callsOf<T>(fn: () => Promise<T>): Promise<{ r: T; calls: string[] }> {
    const settle = async () => {
      let n = -1;
      for (let i = 0; i < 50 && n !== bCalls.length; i++) {
        n = bCalls.length;
        await sleep(300);
      }
    };
    await settle();
    const from = bCalls.length;
    const r = await fn();
    await settle();
    return { r, calls: bCalls.slice(from) };
  }

  it("creation 4, PATCH 5, HEAD 1, the last PATCH 4 (g: the upload's object, s: a shard)", async () => {
    const data = patternBytes(600 * KiB, 47);
    const created = await callsOf(() => create(b, data.length));
    expect(created.calls).toEqual(['incrBy s', 'set s', 'set g', 'expire s']);
    const url = created.r;
    const first = await callsOf(() => patch(url, 0, data.subarray(0, 300 * KiB)));
    expect(first.r.status).toBe(204);
    expect(first.calls).toEqual(['setIfAbsent g', 'get g', 'set g', 'expire s', 'delIfValue g']);
    const h = await callsOf(() => head(url));
    expect(h.r.headers.get('upload-offset')).toBe(String(300 * KiB));
    expect(h.calls).toEqual(['get g']);
    const last = await callsOf(() => patch(url, 300 * KiB, data.subarray(300 * KiB)));
    expect(last.r.status).toBe(204);
    expect(last.calls).toEqual(['setIfAbsent g', 'get g', 'del g', 'delIfValue g']);
  });
});

/**
 * A TCP relay to a Worker that passes client bytes at a limited pace, like a phone's uplink, and
 * cuts every connection (both ways, as a lost network would) once `cutAfter` bytes went through.
 */
async function cuttingLink(port: number, cutAfter: number): Promise<{ url: string; close(): Promise<void> }> {
  const conns = new Set<Socket>();
  let passed = 0;
  const server = createServer((client) => {
    const up = connect(port, '127.0.0.1');
    conns.add(client).add(up);
    const end = () => {
      client.destroy();
      up.destroy();
    };
    client.on('data', (chunk) => {
      passed += chunk.length;
      if (passed > cutAfter) {
        for (const x of conns) x.destroy();
        return;
      }
      up.write(chunk);
      client.pause();
      setTimeout(() => client.resume(), 4);
    });
    up.pipe(client);
    client.on('close', end).on('error', end);
    up.on('close', end).on('error', end);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () =>
      new Promise<void>((r) => {
        for (const x of conns) x.destroy();
        server.close(() => r());
      }),
  };
}

describe('tus-js-client through the Workers', () => {
  it('an upload cut mid-PATCH on Worker A is resumed by tus-js-client on Worker B; the file is byte-equal', async () => {
    const data = patternBytes(6 * MiB + 321, 44);
    let uploadUrl = '';
    const link = await cuttingLink(Number(new URL(a).port), 2 * MiB);
    await new Promise<void>((resolve, reject) => {
      const up = new Upload(data, {
        endpoint: `${link.url}/tus/`,
        metadata: { filename: 'movie.mp4', filetype: 'video/mp4' },
        retryDelays: [],
        onError: () => {
          uploadUrl = up.url ?? '';
          resolve();
        },
        onSuccess: () => reject(new Error('the upload should have been cut')),
      });
      up.start();
    });
    await link.close();
    expect(uploadUrl.startsWith(`${link.url}/tus/`)).toBe(true);
    const onB = on(uploadUrl, b);
    // the cut PATCH keeps what reached the storage; wait until the offset settles
    let offset = -1;
    let same = 0;
    for (let i = 0; i < 150 && same < 5; i++) {
      await sleep(100);
      const now = Number((await head(onB)).headers.get('upload-offset'));
      same = now === offset ? same + 1 : 0;
      offset = now;
    }
    expect(offset).toBeGreaterThan(0);
    expect(offset).toBeLessThan(data.length);

    let fileId = '';
    let resumedFrom = -1;
    await new Promise<void>((resolve, reject) => {
      const up = new Upload(data, {
        endpoint: `${b}/tus/`,
        uploadUrl: onB,
        // 423 while the cut request's lock lapses (tusLockTtlMs 1 s); tus-js-client retries it
        retryDelays: [0, 300, 600, 1000, 1500, 2000],
        onAfterResponse(req, res) {
          if (req.getMethod() === 'HEAD' && resumedFrom < 0)
            resumedFrom = Number(res.getHeader('Upload-Offset'));
          fileId = res.getHeader('Dsm-File-Id') ?? fileId;
        },
        onError: reject,
        onSuccess: () => resolve(),
      });
      up.start();
    });
    expect(resumedFrom).toBe(offset);
    expect(fileId).toBe(onB.slice(onB.lastIndexOf('/') + 1));
    const r = await fetch(`${a}/files/${fileId}`);
    expect(r.headers.get('content-type')).toBe('video/mp4');
    expect(Buffer.from(await r.arrayBuffer()).equals(data)).toBe(true);
  });
});

// The conformance suite of every KvStore (memory, Redis), here against the objects of Worker A.
kvConformance({
  name: 'Durable Object (Miniflare)',
  async open() {
    const ns = (await mfA.getDurableObjectNamespace('DSM_TUS')) as unknown as DurableObjectNamespaceLike;
    return new DurableKvStore(ns, { limits: DEFAULT_DURABLE_KV_LIMITS });
  },
  cleanup: async () => {},
  ttlMs: 1000,
});

describe('a restart of the Worker hosting the objects', () => {
  it("keeps an upload resumable: its state is in the objects' SQLite files, not in memory", async () => {
    const data = patternBytes(1 * MiB + 3, 46);
    const url = await create(a, data.length);
    expect((await patch(url, 0, data.subarray(0, 300 * KiB))).status).toBe(204);
    await mfB.dispose();
    await mfA.dispose();
    mfA = new Miniflare({
      ...workerOptions('dsm-gateway-a', {}),
      durableObjects: { DSM_TUS: { className, useSQLite: true } },
      durableObjectsPersist: join(scratch, 'do'),
    });
    a = (await mfA.ready).toString().replace(/\/$/, '');
    mfB = new Miniflare({
      ...workerOptions('dsm-gateway-b', {}),
      durableObjects: { DSM_TUS: { className, scriptName: 'dsm-gateway-a' } },
    });
    b = (await mfB.ready).toString().replace(/\/$/, '');
    const h = await head(on(url, b));
    expect(h.status).toBe(200);
    expect(h.headers.get('upload-offset')).toBe(String(300 * KiB));
    const done = await patch(on(url, a), 300 * KiB, data.subarray(300 * KiB));
    expect(done.status).toBe(204);
    const id = done.headers.get('dsm-file-id') as string;
    expect(Buffer.from(await (await fetch(`${b}/files/${id}`)).arrayBuffer()).equals(data)).toBe(true);
  });
});

describe("expiry from the object's alarm", () => {
  it('an upload left alone past tusExpiryMs is deleted by its alarm: state and bytes on the storage', async () => {
    const before = new Set(s.dataFiles());
    const data = patternBytes(300 * KiB, 45);
    const url = await create(c, 10 * MiB);
    expect((await patch(url, 0, data)).status).toBe(204);
    const partials = s.dataFiles().filter((f) => !before.has(f));
    expect(partials.length).toBeGreaterThan(0);
    const id = url.slice(url.lastIndexOf('/') + 1);
    const ns = (await mfC.getDurableObjectNamespace('DSM_TUS')) as unknown as DurableObjectNamespaceLike;
    const kv = new DurableKvStore(ns, { limits: C_LIMITS, group: tusKeys.uploadOf });
    expect(await kv.get(`gw:tus:u:${id}`)).not.toBeNull();

    // no request touches the upload from now on: only the alarm can delete it
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline && (await kv.get(`gw:tus:u:${id}`)) !== null) await sleep(200);
    expect(await kv.get(`gw:tus:u:${id}`)).toBeNull();
    // the partial file is gone from the storages' data folders
    expect(s.dataFiles().filter((f) => partials.includes(f))).toEqual([]);
    // and the upload is unknown (404), not merely expired (410)
    expect((await head(url)).status).toBe(404);
  });
});

describe('the bounds of the objects', () => {
  let kv: DurableKvStore;
  let ns: DurableObjectNamespaceLike;
  beforeAll(async () => {
    ns = (await mfC.getDurableObjectNamespace('DSM_TUS')) as unknown as DurableObjectNamespaceLike;
    kv = new DurableKvStore(ns, {
      limits: C_LIMITS,
      group: (k) => (k.startsWith('grp:') ? 'bounds' : undefined),
    });
  });

  it('serialises the calls on one object: of many set-if-absent one wins, many increments all count', async () => {
    const values = Array.from({ length: 10 }, (_, i) => `v${i}`);
    const results = await Promise.all(values.map((v) => kv.setIfAbsent('grp:lock', v, 5000)));
    expect(results.filter(Boolean)).toHaveLength(1);
    expect(await kv.get('grp:lock')).toBe(values[results.indexOf(true)]);
    const counts = await Promise.all(Array.from({ length: 20 }, () => kv.incrBy('grp:n', 1)));
    expect(counts.sort((x, y) => x - y)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    for (const k of ['grp:lock', 'grp:n']) await kv.del(k);
  });

  it('refuses a key or a value past its bound, in the client and in the object', async () => {
    await expect(kv.get(`grp:${'k'.repeat(300)}`)).rejects.toMatchObject({ code: 'DSM_ERR_BAD_INPUT' });
    await expect(kv.set('grp:v', 'v'.repeat(5000))).rejects.toMatchObject({ code: 'DSM_ERR_BAD_INPUT' });
    // straight to the object, past the client's check
    const stub = ns.get(ns.idFromName('g:bounds'));
    const r = await stub.fetch('https://dsm-kv/op', {
      method: 'POST',
      body: JSON.stringify({ op: 'set', key: 'grp:v', value: 'v'.repeat(5000) }),
    });
    expect(r.status).toBe(400);
    expect(((await r.json()) as { code: string }).code).toBe('DSM_ERR_BAD_INPUT');
    for (const body of [
      '{"op":"drop","key":"k"}',
      '{"op":"set","key":"k"}',
      '{"op":"expire","key":"k"}',
      '[',
    ]) {
      const bad = await stub.fetch('https://dsm-kv/op', { method: 'POST', body });
      expect(bad.status).toBe(400);
      expect(((await bad.json()) as { code: string }).code).toBe('DSM_ERR_BAD_INPUT');
    }
  });

  it('holds at most maxKeysPerObject keys: a new key past it is refused, existing ones still change, expired ones make room', async () => {
    for (let i = 0; i < C_LIMITS.maxKeysPerObject; i++) await kv.set(`grp:fill:${i}`, 'x', 60_000);
    await expect(kv.set('grp:one-more', 'x')).rejects.toMatchObject({ code: 'DSM_ERR_CACHE_UNAVAILABLE' });
    await kv.set('grp:fill:10', 'changed');
    expect(await kv.get('grp:fill:10')).toBe('changed');
    // keys that expired make room (dropped when a new key needs it)
    for (let i = 0; i < 4; i++) expect(await kv.expire(`grp:fill:${i}`, 1)).toBe(true);
    await sleep(20);
    await kv.set('grp:one-more', 'x');
    expect(await kv.get('grp:one-more')).toBe('x');
  });

  it('an object reads a request body only up to its bound (boundedText)', async () => {
    let pulled = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(ctl) {
        pulled++;
        ctl.enqueue(new Uint8Array(16 * KiB).fill(120));
        if (pulled === 100) ctl.close();
      },
    });
    const req = new Request('https://dsm-kv/op', { method: 'POST', body, duplex: 'half' } as RequestInit);
    await expect(boundedText(req, 40 * KiB)).rejects.toMatchObject({ code: 'DSM_ERR_BAD_INPUT' });
    expect(pulled).toBeLessThan(10);
    const declared = new Request('https://dsm-kv/op', {
      method: 'POST',
      body: 'x',
      headers: { 'content-length': String(50 * KiB) },
    });
    await expect(boundedText(declared, 40 * KiB)).rejects.toThrow(/request larger than/);
    expect(await boundedText(new Request('https://x/', { method: 'POST', body: '{"a":1}' }), 40 * KiB)).toBe(
      '{"a":1}',
    );
  });

  it('a call to an object that does not answer fails within requestTimeoutMs (CACHE_UNAVAILABLE)', async () => {
    const hung: DurableObjectNamespaceLike = {
      idFromName: (n) => n,
      get: () => ({ fetch: () => new Promise<Response>(() => {}) }),
    };
    const t0 = Date.now();
    const slow = new DurableKvStore(hung, { limits: { ...C_LIMITS, requestTimeoutMs: 300 } });
    await expect(slow.get('k')).rejects.toMatchObject({ code: 'DSM_ERR_CACHE_UNAVAILABLE' });
    expect(Date.now() - t0).toBeLessThan(2000);
  });
});
