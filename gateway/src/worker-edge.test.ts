import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Response as MfResponse, Miniflare } from 'miniflare';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mintToken, signUrl } from './auth.ts';
import { buildWorker, compatibilityDate, patternBytes, type Stack, startStack } from './test-support.ts';

// The Worker's edge cache (edge-cache.ts) and its bundle: built by wrangler as `wrangler deploy`
// would (offline, --dry-run, minified as wrangler.toml asks), run in Miniflare (workerd, with its
// Cache API) against a real local cluster. Storage reads are counted on the storages themselves
// (`dsm_node_requests_total` of their admin listeners). Two Miniflare instances stand for two
// colos: each has a Cache API of its own.

const KiB = 1024;
const MiB = 1024 * KiB;
const SECRET = 'edge-test-hs256-secret-0123456789abcdef';
const SIGNING = { k1: 'edge-test-signing-key-0123456789abcdef' };
const SLICE = 1 * MiB;
/** The documented bound: a stat is trusted this long (edgeCache.statTtlMs). */
const STAT_TTL_MS = 5000;
/** How long isolate memory trusts a stat here (statCacheMs): later requests use the Cache API. */
const MEMORY_STAT_MS = 1000;
const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const token = (app: string, sub: string) => mintToken({ secret: SECRET, kid: 'k1', app, sub, ttlSec: 600 });

let out: string;
let s: Stack;
let mf: Miniflare;
let mf2: Miniflare;
let base: string;
let base2: string;
let storageAdmins: string[];

function workerOptions(out: string, date: string, trackers: string) {
  return {
    modules: true,
    scriptPath: join(out, 'worker.js'),
    modulesRoot: out,
    compatibilityDate: date,
    compatibilityFlags: ['nodejs_compat'],
    host: '127.0.0.1',
    port: 0,
    cache: true,
    bindings: {
      DSM_TRACKERS: trackers,
      DSM_LOG_LEVEL: 'error',
      DSM_AUTH_HS256_KEYS: JSON.stringify({ k1: SECRET }),
      DSM_SIGNING_KEYS: JSON.stringify(SIGNING),
      DSM_GATEWAY: {
        auth: { mode: 'jwt' },
        downloads: { apps: { secure: 'signed' }, signingKeyId: 'k1' },
        statCacheMs: MEMORY_STAT_MS,
        locateCacheMs: 0,
        limits: { downloadsPerClient: 500 },
        // memoryBytes 0: no slice stays in isolate memory, every later read is the Cache API's
        edgeCache: { sliceBytes: SLICE, statTtlMs: STAT_TTL_MS, memoryBytes: 0 },
      },
    },
  };
}

beforeAll(async () => {
  out = mkdtempSync(join(tmpdir(), 'dsm-worker-edge-'));
  const [, stack] = await Promise.all([
    buildWorker(out),
    startStack(
      'sqlite+memory',
      {},
      {
        storagesPerGroup: 2,
        appIds: ['tnvideo', 'secure'],
        extra: { storage: { admin: { listen: '127.0.0.1:0' } } },
      },
    ),
  ]);
  s = stack;
  storageAdmins = [...s.cluster.nodes.values()]
    .filter((n) => n.role === 'storage')
    .map((n) => n.ready.admin as string);
  expect(storageAdmins).toHaveLength(2);
  const date = compatibilityDate();
  const trackers = s.cluster.addresses('tracker').join(',');
  mf = new Miniflare(workerOptions(out, date, trackers));
  mf2 = new Miniflare(workerOptions(out, date, trackers));
  base = (await mf.ready).toString().replace(/\/$/, '');
  base2 = (await mf2.ready).toString().replace(/\/$/, '');
}, 120_000);

afterAll(async () => {
  await mf?.dispose();
  await mf2?.dispose();
  await s?.stop();
  if (out) rmSync(out, { recursive: true, force: true });
});

/** Requests of `command` the storages answered (both storages of the group, any status). */
async function storageRequests(command: 'STORAGE_DOWNLOAD' | 'STORAGE_STAT'): Promise<number> {
  let n = 0;
  for (const admin of storageAdmins) {
    const text = await (await fetch(`${admin}/metrics`)).text();
    const re = new RegExp(`^dsm_node_requests_total\\{[^}]*command="${command}"[^}]*\\} (\\d+)$`, 'gm');
    for (const m of text.matchAll(re)) n += Number(m[1]);
  }
  return n;
}

async function upload(app: string, data: Uint8Array, name = 'clip.mp4') {
  const r = await fetch(`${base}/files?filename=${name}`, {
    method: 'POST',
    body: data as Uint8Array<ArrayBuffer>,
    headers: { 'content-type': 'video/mp4', authorization: `Bearer ${await token(app, 'u1')}` },
  });
  expect(r.status).toBe(201);
  const reply = (await r.json()) as { id: string; url: string; sha256: string };
  expect(reply.sha256).toBe(sha256(data));
  return { id: reply.id, path: `/files/${reply.id}`, etag: `"${reply.sha256}"` };
}

async function bytesOf(r: Response): Promise<Buffer> {
  return Buffer.from(await r.arrayBuffer());
}

/** A Miniflare instance's `caches.default`, as the test reads and writes it. */
async function cacheOf(m: Miniflare) {
  const caches = (await m.getCaches()) as unknown as {
    default: {
      match(key: string): Promise<{ arrayBuffer(): Promise<ArrayBuffer> } | undefined>;
      put(key: string, res: MfResponse): Promise<void>;
    };
  };
  return caches.default;
}

const statKey = (id: string) => `https://dsm-edge-cache.invalid/_dsm-edge/v1/stat/${id}`;

/** The Cache API key of a slice (edge-cache.ts sliceKey, no publicUrl configured). */
const sliceKey = (id: string, sha: string, index: number) =>
  `https://dsm-edge-cache.invalid/_dsm-edge/v1/slice/${id}/${sha}/${SLICE}/${index}`;

describe('the Worker bundle', () => {
  it('is under 350 KiB minified and imports nothing but cloudflare:sockets', () => {
    const bundle = join(out, 'worker.js');
    const size = statSync(bundle).size;
    console.log(`Worker bundle (wrangler deploy --dry-run, minified): ${(size / KiB).toFixed(1)} KiB`);
    expect(size).toBeGreaterThan(50 * KiB);
    expect(size).toBeLessThan(350 * KiB);
    const code = readFileSync(bundle, 'utf8');
    const imports = [...code.matchAll(/(?:^|[;\n])\s*import\s*(?:[^;"'()]*?\s*from\s*)?"([^"]+)"/g)].map(
      (m) => m[1],
    );
    expect(imports).toEqual(['cloudflare:sockets']);
    // zod's locales (all but English) stay out: a phrase of the German one
    expect(code).not.toContain('zu haben');
  });
});

describe('edge cache of playback (Cache API slices)', () => {
  it('100 concurrent overlapping range requests read each slice from the storage once; byte-exact; later requests come from the Cache API', async () => {
    const data = patternBytes(5 * MiB + 300 * KiB, 71);
    const f = await upload('tnvideo', data);
    const slices = Math.ceil(data.length / SLICE);
    const ranges = Array.from({ length: 100 }, (_, i) => {
      const start = (i * 104_729) % (data.length - 1);
      const end = Math.min(data.length - 1, start + 200 * KiB + ((i * 7919) % (2 * MiB)));
      return [start, end] as const;
    });
    // every slice is wanted by several requests, most ranges cross a slice boundary
    const wanted = new Map<number, number>();
    for (const [a, b] of ranges) {
      for (let i = Math.floor(a / SLICE); i <= Math.floor(b / SLICE); i++)
        wanted.set(i, (wanted.get(i) ?? 0) + 1);
    }
    expect(wanted.size).toBe(slices);
    expect(Math.min(...wanted.values())).toBeGreaterThan(5);
    const before = await storageRequests('STORAGE_DOWNLOAD');
    const wave = () =>
      Promise.all(
        ranges.map(async ([a, b]) => {
          const r = await fetch(`${base}${f.path}`, { headers: { Range: `bytes=${a}-${b}` } });
          expect(r.status).toBe(206);
          expect(r.headers.get('content-range')).toBe(`bytes ${a}-${b}/${data.length}`);
          expect(r.headers.get('content-length')).toBe(String(b - a + 1));
          const got = await bytesOf(r);
          expect(got.equals(data.subarray(a, b + 1))).toBe(true);
        }),
      );
    await wave();
    expect(await storageRequests('STORAGE_DOWNLOAD')).toBe(before + slices);

    // the slices are in the Cache API (isolate memory keeps none: memoryBytes 0)
    const cache = await cacheOf(mf);
    for (let i = 0; i < slices; i++) {
      const hit = await cache.match(sliceKey(f.id, sha256(data), i));
      expect(hit, `slice ${i} in the Cache API`).toBeDefined();
      const bytes = Buffer.from(await (hit as { arrayBuffer(): Promise<ArrayBuffer> }).arrayBuffer());
      expect(bytes.equals(data.subarray(i * SLICE, Math.min(data.length, (i + 1) * SLICE)))).toBe(true);
    }

    // the same storm again, and the whole file: nothing more from the storage
    await wave();
    const whole = await fetch(`${base}${f.path}`);
    expect(whole.status).toBe(200);
    expect(whole.headers.get('content-length')).toBe(String(data.length));
    expect((await bytesOf(whole)).equals(data)).toBe(true);
    expect(await storageRequests('STORAGE_DOWNLOAD')).toBe(before + slices);
  }, 60_000);

  it('ranges across slice boundaries, the last partial slice, suffix ranges and If-Range: byte-exact, each slice read once', async () => {
    const data = patternBytes(3 * MiB + 512 * KiB, 72);
    const size = data.length;
    const f = await upload('tnvideo', data);
    const before = await storageRequests('STORAGE_DOWNLOAD');
    const get = (headers: Record<string, string>) => fetch(`${base}${f.path}`, { headers });
    const expectRange = async (r: Response, a: number, b: number) => {
      expect(r.status).toBe(206);
      expect(r.headers.get('content-range')).toBe(`bytes ${a}-${b}/${size}`);
      expect((await bytesOf(r)).equals(data.subarray(a, b + 1))).toBe(true);
    };
    // across the boundary of slices 0 and 1, and across two boundaries
    await expectRange(await get({ Range: `bytes=${SLICE - 10}-${SLICE + 9}` }), SLICE - 10, SLICE + 9);
    await expectRange(await get({ Range: `bytes=${SLICE - 1}-${2 * SLICE + 1}` }), SLICE - 1, 2 * SLICE + 1);
    // the last slice is 512 KiB
    await expectRange(await get({ Range: `bytes=${3 * SLICE}-` }), 3 * SLICE, size - 1);
    await expectRange(await get({ Range: `bytes=${size - 1}-${size + 100}` }), size - 1, size - 1);
    // suffix ranges: within the last slice, across slices, and longer than the file
    await expectRange(await get({ Range: 'bytes=-1000' }), size - 1000, size - 1);
    await expectRange(await get({ Range: `bytes=-${SLICE}` }), size - SLICE, size - 1);
    await expectRange(await get({ Range: `bytes=-${10 * size}` }), 0, size - 1);
    // If-Range: the ETag or the date matches → the range; anything else → the whole file
    const head = await fetch(`${base}${f.path}`, { method: 'HEAD' });
    expect(head.headers.get('etag')).toBe(f.etag);
    const lastModified = head.headers.get('last-modified') as string;
    await expectRange(
      await get({ Range: `bytes=${SLICE + 5}-${SLICE + 99}`, 'If-Range': f.etag }),
      SLICE + 5,
      SLICE + 99,
    );
    await expectRange(await get({ Range: 'bytes=100-199', 'If-Range': lastModified }), 100, 199);
    for (const stale of ['"0000"', `W/${f.etag}`, 'Thu, 01 Jan 1970 00:00:00 GMT']) {
      const r = await get({ Range: 'bytes=100-199', 'If-Range': stale });
      expect(r.status, `If-Range ${stale}`).toBe(200);
      expect(r.headers.get('content-length')).toBe(String(size));
      expect((await bytesOf(r)).equals(data)).toBe(true);
    }
    const bad = await get({ Range: `bytes=${size}-` });
    expect(bad.status).toBe(416);
    expect(bad.headers.get('content-range')).toBe(`bytes */${size}`);
    await bad.arrayBuffer();
    // four slices, each read once
    expect(await storageRequests('STORAGE_DOWNLOAD')).toBe(before + 4);
  }, 60_000);

  it('answers HEAD and conditional requests from the cached stat (no storage request)', async () => {
    const data = patternBytes(1.5 * MiB, 73);
    const f = await upload('tnvideo', data);
    const first = await fetch(`${base}${f.path}`, { method: 'HEAD' });
    expect(first.status).toBe(200);
    const lastModified = first.headers.get('last-modified') as string;
    // past what isolate memory trusts: the stat now comes from the Cache API
    await sleep(MEMORY_STAT_MS + 200);
    const stats = await storageRequests('STORAGE_STAT');
    const downloads = await storageRequests('STORAGE_DOWNLOAD');
    const head = await fetch(`${base}${f.path}`, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.headers.get('content-length')).toBe(String(data.length));
    expect(head.headers.get('etag')).toBe(f.etag);
    expect(head.headers.get('accept-ranges')).toBe('bytes');
    expect(head.headers.get('content-type')).toBe('video/mp4');
    const headRange = await fetch(`${base}${f.path}`, { method: 'HEAD', headers: { Range: 'bytes=10-19' } });
    expect(headRange.status).toBe(206);
    expect(headRange.headers.get('content-range')).toBe(`bytes 10-19/${data.length}`);
    const validators: Record<string, string>[] = [
      { 'If-None-Match': f.etag },
      { 'If-Modified-Since': lastModified },
    ];
    for (const h of validators) {
      const r = await fetch(`${base}${f.path}`, { headers: h });
      expect(r.status).toBe(304);
      expect(r.headers.get('etag')).toBe(f.etag);
      expect((await r.arrayBuffer()).byteLength).toBe(0);
    }
    const failed = await fetch(`${base}${f.path}`, { headers: { 'If-Match': '"0000"' } });
    expect(failed.status).toBe(412);
    await failed.arrayBuffer();
    expect(await storageRequests('STORAGE_STAT')).toBe(stats);
    expect(await storageRequests('STORAGE_DOWNLOAD')).toBe(downloads);
  }, 30_000);

  it('a delete through the gateway: 404 at once in its colo (stat and slices purged), within edgeCache.statTtlMs in another', async () => {
    const data = patternBytes(2 * MiB + 10 * KiB, 74);
    const f = await upload('tnvideo', data);
    const sha = sha256(data);
    // both colos have the file whole in their Cache API
    expect((await bytesOf(await fetch(`${base}${f.path}`))).equals(data)).toBe(true);
    const warmed2 = Date.now();
    expect((await bytesOf(await fetch(`${base2}${f.path}`))).equals(data)).toBe(true);
    const cache = await cacheOf(mf);
    expect(await cache.match(sliceKey(f.id, sha, 2))).toBeDefined();

    // a delete needs the owner's token
    const anon = await fetch(`${base}${f.path}`, { method: 'DELETE' });
    expect(anon.status).toBe(401);
    await anon.arrayBuffer();
    expect((await fetch(`${base}${f.path}`, { method: 'HEAD' })).status).toBe(200);

    const del = await fetch(`${base}${f.path}`, {
      method: 'DELETE',
      headers: { authorization: `Bearer ${await token('tnvideo', 'u1')}` },
    });
    expect(del.status).toBe(204);
    const gone = await fetch(`${base}${f.path}`);
    expect(gone.status).toBe(404);
    await gone.arrayBuffer();
    expect((await fetch(`${base}${f.path}`, { headers: { Range: 'bytes=0-99' } })).status).toBe(404);
    for (let i = 0; i < 3; i++) {
      expect(await cache.match(sliceKey(f.id, sha, i)), `slice ${i} purged`).toBeUndefined();
    }
    expect(await cache.match(statKey(f.id))).toBeUndefined();

    // the other colo did not hear of it: it serves its cached copy until its stat is too old
    const still = await fetch(`${base2}${f.path}`, { headers: { Range: 'bytes=0-99' } });
    if (Date.now() - warmed2 < STAT_TTL_MS - 500) {
      expect(still.status).toBe(206);
      expect((await bytesOf(still)).equals(data.subarray(0, 100))).toBe(true);
    } else await still.arrayBuffer();
    let status = 0;
    while (Date.now() - warmed2 < STAT_TTL_MS + 3000) {
      const r = await fetch(`${base2}${f.path}`, { headers: { Range: 'bytes=0-99' } });
      status = r.status;
      await r.arrayBuffer();
      if (status === 404) break;
      await sleep(200);
    }
    expect(status).toBe(404);
    // within the documented bound (plus the time of the last poll)
    expect(Date.now() - warmed2).toBeLessThan(STAT_TTL_MS + 1500);
  }, 30_000);

  it('a tus termination of a finished upload purges it from the cache too', async () => {
    const data = patternBytes(1 * MiB + 77 * KiB, 76);
    const auth = { authorization: `Bearer ${await token('tnvideo', 'u1')}` };
    const created = await fetch(`${base}/tus/`, {
      method: 'POST',
      headers: { ...auth, 'Tus-Resumable': '1.0.0', 'Upload-Length': String(data.length) },
    });
    expect(created.status).toBe(201);
    const url = created.headers.get('location') as string;
    const patched = await fetch(url, {
      method: 'PATCH',
      headers: {
        ...auth,
        'Tus-Resumable': '1.0.0',
        'Upload-Offset': '0',
        'Content-Type': 'application/offset+octet-stream',
      },
      body: data as Uint8Array<ArrayBuffer>,
    });
    expect(patched.status).toBe(204);
    const id = patched.headers.get('dsm-file-id') as string;
    const ok = await fetch(`${base}/files/${id}`);
    expect((await bytesOf(ok)).equals(data)).toBe(true);
    const cache = await cacheOf(mf);
    expect(await cache.match(sliceKey(id, sha256(data), 1))).toBeDefined();
    const del = await fetch(url, { method: 'DELETE', headers: { ...auth, 'Tus-Resumable': '1.0.0' } });
    expect(del.status).toBe(204);
    const gone = await fetch(`${base}/files/${id}`, { headers: { Range: 'bytes=0-9' } });
    expect(gone.status).toBe(404);
    await gone.arrayBuffer();
    // the purge runs past the reply (waitUntil): give it a moment
    let left = 2;
    for (let i = 0; i < 50 && left > 0; i++) {
      left = 0;
      for (const k of [sliceKey(id, sha256(data), 0), sliceKey(id, sha256(data), 1), statKey(id)]) {
        if (await cache.match(k)) left++;
      }
      if (left > 0) await sleep(50);
    }
    expect(left).toBe(0);
  }, 30_000);

  it('ignores stat entries in the cache that are not its own (bad JSON, wrong shape, oversized, from the future)', async () => {
    const cache = await cacheOf(mf);
    const now = Date.now();
    const good = (data: Uint8Array) => ({
      v: 1,
      at: now,
      size: data.length,
      mtimeMs: now,
      sha256: sha256(data),
      contentType: 'video/mp4',
    });
    const bodies: ((data: Uint8Array) => string)[] = [
      () => '{"v":1,"at":',
      (d) => JSON.stringify({ ...good(d), size: -5 }),
      (d) => JSON.stringify({ ...good(d), sha256: 'nothex' }),
      (d) => JSON.stringify({ ...good(d), pad: 'x'.repeat(8000) }),
      (d) => JSON.stringify({ ...good(d), size: 1, at: now + 3_600_000 }),
      (d) => JSON.stringify({ ...good(d), size: 1, at: now - STAT_TTL_MS - 1000 }),
    ];
    for (const [i, body] of bodies.entries()) {
      const data = patternBytes(100 * KiB + i, 80 + i);
      const f = await upload('tnvideo', data, `x${i}.mp4`);
      await cache.put(
        statKey(f.id),
        new MfResponse(body(data), {
          headers: { 'Cache-Control': 'max-age=600', 'Content-Type': 'application/json' },
        }),
      );
      const stats = await storageRequests('STORAGE_STAT');
      const r = await fetch(`${base}${f.path}`, { headers: { Range: 'bytes=0-99' } });
      expect(r.status, `entry ${i}`).toBe(206);
      expect(r.headers.get('content-range'), `entry ${i}`).toBe(`bytes 0-99/${data.length}`);
      expect(r.headers.get('etag'), `entry ${i}`).toBe(f.etag);
      expect((await bytesOf(r)).equals(data.subarray(0, 100))).toBe(true);
      expect(await storageRequests('STORAGE_STAT'), `entry ${i}: the storage was asked`).toBe(stats + 1);
    }
  }, 30_000);

  it('refuses unsigned and badly signed requests for a signed app before the cache: no cached byte, no 304', async () => {
    const data = patternBytes(1 * MiB + 3, 75);
    const f = await upload('secure', data);
    const signed = await signUrl(`${base}${f.path}`, { kid: 'k1', secret: SIGNING.k1, expiresInSec: 60 });
    // warm the cache with a signed read
    const ok = await fetch(signed);
    expect(ok.status).toBe(200);
    expect((await bytesOf(ok)).equals(data)).toBe(true);
    const u = new URL(signed);
    const badSig = `${base}${f.path}?exp=${u.searchParams.get('exp')}&kid=k1&sig=${'A'.repeat(43)}`;
    const otherPath = await signUrl(`${base}${f.path}/x.mp4`, {
      kid: 'k1',
      secret: SIGNING.k1,
      expiresInSec: 60,
    });
    const otherPathHere = `${base}${f.path}${new URL(otherPath).search}`;
    const downloads = await storageRequests('STORAGE_DOWNLOAD');
    const stats = await storageRequests('STORAGE_STAT');
    const attempts: [string, RequestInit][] = [
      [`${base}${f.path}`, {}],
      [`${base}${f.path}`, { headers: { Range: 'bytes=0-99' } }],
      [`${base}${f.path}`, { method: 'HEAD' }],
      [`${base}${f.path}`, { headers: { 'If-None-Match': f.etag } }],
      [`${base}${f.path}/clip.mp4`, {}],
      [`${base}${f.path}/meta`, {}],
      [badSig, {}],
      [badSig, { headers: { Range: 'bytes=0-99' } }],
      [otherPathHere, {}],
    ];
    for (const [url, init] of attempts) {
      const r = await fetch(url, init);
      const what = `${init.method ?? 'GET'} ${url.replace(base, '')} ${JSON.stringify(init.headers ?? {})}`;
      expect([401, 403], what).toContain(r.status);
      const body = await bytesOf(r);
      if (init.method !== 'HEAD') {
        expect(r.headers.get('content-type'), what).toBe('application/problem+json');
        expect(body.includes(data.subarray(0, 64)), what).toBe(false);
      }
    }
    // refused before any lookup: not even a stat was asked of the storage
    expect(await storageRequests('STORAGE_STAT')).toBe(stats);
    expect(await storageRequests('STORAGE_DOWNLOAD')).toBe(downloads);
    // the signed URL still works, from the cache
    const again = await fetch(signed, { headers: { Range: 'bytes=0-99' } });
    expect(again.status).toBe(206);
    expect((await bytesOf(again)).equals(data.subarray(0, 100))).toBe(true);
    expect(await storageRequests('STORAGE_DOWNLOAD')).toBe(downloads);
  }, 30_000);
});

describe('edgeCache config', () => {
  it('refuses a slice size outside 1..8 MiB with a problem naming the key', async () => {
    const opts = workerOptions(out, '2026-04-26', s.cluster.addresses('tracker').join(','));
    const bad = new Miniflare({
      ...opts,
      bindings: {
        ...opts.bindings,
        DSM_GATEWAY: { ...opts.bindings.DSM_GATEWAY, edgeCache: { sliceBytes: 16 * MiB } },
      },
    });
    try {
      const r = await bad.dispatchFetch('http://gw.test/healthz');
      expect(r.status).toBe(500);
      const p = (await r.json()) as { code: string; detail: string };
      expect(p.code).toBe('DSM_ERR_CONFIG');
      expect(p.detail).toMatch(/config key "edgeCache\.sliceBytes"/);
    } finally {
      await bad.dispose();
    }
  });
});
