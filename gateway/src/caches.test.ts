import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { request } from 'node:http';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { decodePublicId, encodePublicId } from '@dsm/client';
import { MemoryKvStore } from '@dsm/kv';
import { until } from '@dsm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mintToken, signUrl } from './auth.ts';
import type { GatewayConfigInput } from './config.ts';
import type { RunningGateway } from './node.ts';
import { patternBytes, type Stack, startStack } from './test-support.ts';

// The gateway's caches (stat, small files, coalesced slices of big files) on a real cluster:
// mariadb + redis, several gateways sharing only Redis (each with its own KV connection, as
// separate processes have), deletes through one seen by the others, ranges byte-exact.

const KiB = 1024;
const MiB = 1024 * KiB;
const SECRET = 'caches-test-secret-long-enough-0123456789';
const KEYS = { k1: 'caches-signing-key-0123456789abcdef' };

/** Caching on (the stack's default gateway has statCacheMs 0), deletes with a token. */
const CACHING: GatewayConfigInput = {
  statCacheMs: 300_000,
  invalidationPollMs: 50,
  auth: { mode: 'jwt', hs256Secret: SECRET, allowAnonymousUploads: true },
  downloads: { apps: { secure: 'signed' }, signingKeys: KEYS, signingKeyId: 'k1' },
  fileCache: { maxFileBytes: 64 * KiB, maxBytes: 200 * KiB },
  rangeCache: { sliceBytes: MiB, maxBytes: 16 * MiB, maxReplyBytes: 16 * MiB },
  limits: { downloadsPerClient: 512, connectionsPerClient: 512 },
};

let s: Stack;

const execFileP = promisify(execFile);
const DSM_CLI = fileURLToPath(new URL('../../cli/bin/dsm.js', import.meta.url));

beforeAll(async () => {
  s = await startStack('mariadb+redis', {}, { appIds: ['tnvideo', 'secure'] });
}, 120_000);

afterAll(async () => {
  await s?.stop();
}, 60_000);

const token = (app: string, sub: string) => mintToken({ secret: SECRET, app, sub, ttlSec: 600 });

async function upload(g: RunningGateway, bytes: Uint8Array<ArrayBuffer>, app = 'tnvideo', user = 'owner') {
  const r = await fetch(`${g.url}/files`, {
    method: 'POST',
    body: bytes,
    headers: { authorization: `Bearer ${await token(app, user)}` },
  });
  expect(r.status).toBe(201);
  return (await r.json()) as { id: string; url: string; sha256: string };
}

async function metric(g: RunningGateway, name: string): Promise<number> {
  const text = await (await fetch(`${g.adminUrl}/metrics`)).text();
  let n = 0;
  for (const m of text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\d+)`, 'gm'))) n += Number(m[1]);
  return n;
}

async function get(url: string, headers: Record<string, string> = {}) {
  const r = await fetch(url, { headers });
  return { status: r.status, headers: r.headers, body: new Uint8Array(await r.arrayBuffer()) };
}

/**
 * GET with node:http, hashing the body as it comes (100 bodies of 4 MiB held at once would
 * slow the test's own process, which runs the gateway too).
 */
function getHashed(url: string, headers: Record<string, string>) {
  return new Promise<{ status: number; contentRange?: string; length: number; sha256: string }>(
    (resolve, reject) => {
      const req = request(url, { headers, agent: false }, (res) => {
        const h = createHash('sha256');
        let length = 0;
        res.on('data', (c: Buffer) => {
          h.update(c);
          length += c.length;
        });
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            contentRange: res.headers['content-range'],
            length,
            sha256: h.digest('hex'),
          }),
        );
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end();
    },
  );
}

/**
 * `n` streams of the same bytes from `g`'s slice cache, started in one tick (their first pulls
 * ask for the first slice before any storage reply can come: they share it), read to the end.
 */
async function readTogether(
  g: RunningGateway,
  publicId: string,
  start: number,
  length: number,
  n: number,
): Promise<Uint8Array[]> {
  const slices = g.core.slices;
  if (!slices) throw new Error('no slice cache');
  // the file as serveFile hands it to the slices (its etag is part of every slice's key)
  const entry = await g.core.file(publicId, decodePublicId(publicId), true);
  const f = { ...entry, size: entry.stat.size };
  const readers = Array.from({ length: n }, () =>
    slices.stream(f, start, length, { source: g.core.sliceSource, keep: true, stallMs: 10_000 }).getReader(),
  );
  const firsts = readers.map((r) => r.read());
  return Promise.all(
    readers.map(async (r, i) => {
      const parts: Uint8Array[] = [];
      for (
        let x = await (firsts[i] as Promise<ReadableStreamReadResult<Uint8Array>>);
        !x.done;
        x = await r.read()
      )
        parts.push(x.value);
      return new Uint8Array(Buffer.concat(parts));
    }),
  );
}

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

const same = (a: Uint8Array, b: Uint8Array) => a.length === b.length && Buffer.from(a).equals(Buffer.from(b));

describe('a delete through one gateway', () => {
  it('drops the stat, the small file and the slices another gateway cached (two gateways sharing Redis)', async () => {
    const a = await s.startGateway(CACHING);
    const b = await s.startGateway(CACHING);
    expect(a.kv).not.toBe(b.kv);
    const smallBytes = patternBytes(20 * KiB, 1);
    const bigBytes = patternBytes(3 * MiB + 77, 2);
    const small = await upload(a, smallBytes);
    const big = await upload(a, bigBytes);
    const range = { range: `bytes=${MiB - 10}-${2 * MiB + 10}` };

    // b caches all three: the small file's bytes, the big file's stat and slices
    for (let i = 0; i < 2; i++) {
      const r = await get(`${b.url}/files/${small.id}`);
      expect(r.status).toBe(200);
      expect(same(r.body, smallBytes)).toBe(true);
    }
    expect(b.core.fileCached(small.id)).toBe(true);
    // wanted by one request at a time, a slice is read only where the range wants it and is not
    // kept; wanted by two at once, it is read whole and kept, and then comes from memory
    const want = bigBytes.subarray(MiB - 10, 2 * MiB + 11);
    for (let i = 1; i <= 2; i++) {
      const r = await get(`${b.url}/files/${big.id}`, range);
      expect(r.status).toBe(206);
      expect(same(r.body, want)).toBe(true);
      // three slices (the file's), a part of each
      expect(await metric(b, 'dsm_gateway_slice_reads_total')).toBe(3 * i);
      expect(await metric(b, 'dsm_gateway_slice_read_bytes_total')).toBe(want.length * i);
      expect(b.core.slices?.bytes).toBe(0);
    }
    const together = await readTogether(b, big.id, MiB - 10, want.length, 2);
    for (const body of together) expect(same(body, want)).toBe(true);
    // the first slice (asked for by both in one tick) at least: whole, and kept
    expect(await metric(b, 'dsm_gateway_slice_read_bytes_total')).toBeGreaterThanOrEqual(
      2 * want.length + MiB,
    );
    expect(b.core.slices?.bytes).toBeGreaterThanOrEqual(MiB);
    const reads = await metric(b, 'dsm_gateway_slice_reads_total');
    const head = await get(`${b.url}/files/${big.id}`, { range: 'bytes=0-199999' });
    expect(same(head.body, bigBytes.subarray(0, 200_000))).toBe(true);
    expect(await metric(b, 'dsm_gateway_slice_reads_total')).toBe(reads);
    expect((await get(`${b.url}/files/${big.id}/meta`)).status).toBe(200);

    // deleted through a: b answers 404 for each within twice the journal's poll interval
    for (const f of [small, big]) {
      const r = await fetch(`${a.url}/files/${f.id}`, {
        method: 'DELETE',
        headers: { authorization: `Bearer ${await token('tnvideo', 'owner')}` },
      });
      expect(r.status).toBe(204);
    }
    const t0 = Date.now();
    await until(async () => (await get(`${b.url}/files/${small.id}`)).status === 404, 5000, 10);
    await until(async () => (await get(`${b.url}/files/${big.id}`, range)).status === 404, 5000, 10);
    expect((await get(`${b.url}/files/${big.id}/meta`)).status).toBe(404);
    expect((await get(`${b.url}/files/${small.id}`, { range: 'bytes=0-9' })).status).toBe(404);
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(b.core.fileCached(small.id)).toBe(false);
    await a.close();
    await b.close();
  });
});

describe('a delete made on a storage, not through a gateway', () => {
  it('`dsm rm` drops the stat, the small file and the slices every gateway cached (the storages delete log)', async () => {
    // separate KV stores: the gateways' delete journal cannot tell them, only the storages can
    const a = await s.startGateway(CACHING, new MemoryKvStore());
    const b = await s.startGateway(CACHING, new MemoryKvStore());
    const smallBytes = patternBytes(20 * KiB, 5);
    const bigBytes = patternBytes(3 * MiB + 5, 6);
    const small = await upload(a, smallBytes);
    const big = await upload(a, bigBytes);
    const range = { range: `bytes=${MiB}-${2 * MiB - 1}` };
    for (const g of [a, b]) {
      for (let i = 0; i < 2; i++) expect((await get(`${g.url}/files/${small.id}`)).status).toBe(200);
      expect(g.core.fileCached(small.id)).toBe(true);
      const together = await readTogether(g, big.id, MiB, MiB, 2);
      for (const body of together) expect(same(body, bigBytes.subarray(MiB, 2 * MiB))).toBe(true);
      expect(g.core.slices?.bytes).toBeGreaterThanOrEqual(MiB);
    }
    const env = { ...process.env, DSM_TRACKERS: s.cluster.addresses('tracker').join(';') };
    for (const f of [small, big]) {
      const rm = await execFileP(process.execPath, [DSM_CLI, 'rm', f.id], { env });
      expect(rm.stderr).toMatch(/^deleted /);
    }
    const t0 = Date.now();
    for (const g of [a, b]) {
      await until(async () => (await get(`${g.url}/files/${small.id}`)).status === 404, 5000, 10);
      await until(async () => (await get(`${g.url}/files/${big.id}`, range)).status === 404, 5000, 10);
      expect((await get(`${g.url}/files/${big.id}/meta`)).status).toBe(404);
      expect(g.core.fileCached(small.id)).toBe(false);
    }
    // within twice the poll interval (50 ms), plus the requests' own time
    expect(Date.now() - t0).toBeLessThan(2000);
    // counted: each gateway dropped the two files (and, at its first read, everything)
    for (const g of [a, b]) {
      const text = await (await fetch(`${g.adminUrl}/metrics`)).text();
      expect(Number(/dsm_gateway_cache_invalidations_total\{kind="file"\} (\d+)/.exec(text)?.[1])).toBe(2);
      expect(
        Number(/dsm_gateway_cache_invalidations_total\{kind="failed"\} (\d+)/.exec(text)?.[1] ?? 0),
      ).toBe(0);
    }
    // a file not deleted stays cached: its id alone was dropped, not everything
    const kept = await upload(a, patternBytes(10 * KiB, 7));
    for (let i = 0; i < 2; i++) expect((await get(`${a.url}/files/${kept.id}`)).status).toBe(200);
    const other = await upload(a, patternBytes(10 * KiB, 8));
    const rm = await execFileP(process.execPath, [DSM_CLI, 'rm', other.id], { env });
    expect(rm.stderr).toMatch(/^deleted /);
    await until(async () => (await get(`${a.url}/files/${other.id}`)).status === 404, 5000, 10);
    expect(a.core.fileCached(kept.id)).toBe(true);
    await a.close();
    await b.close();
  });
});

describe('range coalescing', () => {
  it('100 concurrent requests for one 4 MiB range read each of its 4 slices once and get the exact bytes', async () => {
    const g = await s.startGateway(CACHING);
    const bytes = patternBytes(10 * MiB + 12_345, 3);
    const f = await upload(g, bytes);
    const before = await metric(g, 'dsm_gateway_slice_reads_total');
    const rs = await Promise.all(
      Array.from({ length: 100 }, () =>
        getHashed(`${g.url}/files/${f.id}`, { range: `bytes=${MiB}-${5 * MiB - 1}` }),
      ),
    );
    const want = sha(bytes.subarray(MiB, 5 * MiB));
    for (const r of rs) {
      expect(r.status).toBe(206);
      expect(r.contentRange).toBe(`bytes ${MiB}-${5 * MiB - 1}/${bytes.length}`);
      expect(r.length).toBe(4 * MiB);
      expect(r.sha256).toBe(want);
    }
    expect((await metric(g, 'dsm_gateway_slice_reads_total')) - before).toBe(4);
    expect(await metric(g, 'dsm_gateway_slice_read_bytes_total')).toBe(4 * MiB);
    // wanted by more than one request at once: kept
    expect(g.core.slices?.bytes).toBe(4 * MiB);
    await g.close();
  });

  it('overlapping ranges across slices, the last partial slice, suffix and open ranges, If-Range: byte-exact, no byte read more than twice, slices wanted again kept', async () => {
    const g = await s.startGateway(CACHING);
    const size = 10 * MiB + 12_345;
    const bytes = patternBytes(size, 4);
    const f = await upload(g, bytes);
    const url = `${g.url}/files/${f.id}`;
    const etag = `"${f.sha256}"`;
    const before = await metric(g, 'dsm_gateway_slice_reads_total');
    const cases: { headers: Record<string, string>; status: number; from: number; to: number }[] = [];
    for (let i = 0; i < 100; i++) {
      const k = i % 5;
      if (k === 0) {
        const from = (i * 104_729) % (size - 3 * MiB);
        cases.push({
          headers: { range: `bytes=${from}-${from + 3 * MiB - 1}` },
          status: 206,
          from,
          to: from + 3 * MiB,
        });
      } else if (k === 1)
        cases.push({ headers: { range: 'bytes=-5000' }, status: 206, from: size - 5000, to: size });
      else if (k === 2)
        cases.push({
          headers: { range: `bytes=${10 * MiB - 70_000}-` },
          status: 206,
          from: 10 * MiB - 70_000,
          to: size,
        });
      else if (k === 3)
        cases.push({
          headers: { range: `bytes=${2 * MiB - 1}-${4 * MiB}`, 'if-range': etag },
          status: 206,
          from: 2 * MiB - 1,
          to: 4 * MiB + 1,
        });
      // an If-Range that does not match: the whole file (200), from the slices too
      else
        cases.push({
          headers: { range: 'bytes=0-99', 'if-range': '"0000"' },
          status: 200,
          from: 0,
          to: size,
        });
    }
    const rs = await Promise.all(cases.map((c) => getHashed(url, c.headers)));
    rs.forEach((r, i) => {
      const c = cases[i] as (typeof cases)[number];
      expect(r.status).toBe(c.status);
      expect(r.length).toBe(c.to - c.from);
      expect(r.sha256, JSON.stringify(c.headers)).toBe(sha(bytes.subarray(c.from, c.to)));
    });
    // the file has 11 slices (the cache holds 16 MiB). A byte is read at most twice: for the
    // request that wanted it first, if that one was alone then, and when its slice was read whole
    // to be kept (in at most three parts: the first request's, before it and after it).
    const reads = (await metric(g, 'dsm_gateway_slice_reads_total')) - before;
    expect(reads).toBeLessThanOrEqual(4 * 11);
    expect(reads).toBeGreaterThanOrEqual(11);
    expect(await metric(g, 'dsm_gateway_slice_read_bytes_total')).toBeLessThanOrEqual(2 * size);
    // every slice was wanted more than once: all are kept, and the same requests again read nothing
    expect(g.core.slices?.bytes).toBe(size);
    const again = await Promise.all(cases.map((c) => getHashed(url, c.headers)));
    again.forEach((r, i) => {
      const c = cases[i] as (typeof cases)[number];
      expect(r.sha256, JSON.stringify(c.headers)).toBe(sha(bytes.subarray(c.from, c.to)));
    });
    expect((await metric(g, 'dsm_gateway_slice_reads_total')) - before).toBe(reads);
    expect(g.core.slices?.bytes).toBeLessThanOrEqual(16 * MiB);
    await g.close();
  });
});

describe('the small-file cache', () => {
  it('never holds more than maxBytes, keeps no file above maxFileBytes, and answers ranges and conditionals from memory', async () => {
    const g = await s.startGateway(CACHING);
    const files: { id: string; bytes: Uint8Array<ArrayBuffer>; sha256: string }[] = [];
    for (let i = 0; i < 6; i++) {
      const bytes = patternBytes(60 * KiB + i, 10 + i);
      files.push({ ...(await upload(g, bytes)), bytes });
    }
    const large = patternBytes(64 * KiB + 1, 20);
    const big = await upload(g, large);
    for (const f of files) {
      const r = await get(`${g.url}/files/${f.id}`);
      expect(same(r.body, f.bytes)).toBe(true);
      expect(g.core.fileCacheBytes).toBeLessThanOrEqual(200 * KiB);
    }
    // 3 of 60 KiB fit in 200 KiB: the last three, not the first
    expect(files.map((f) => g.core.fileCached(f.id))).toEqual([false, false, false, true, true, true]);
    expect(same((await get(`${g.url}/files/${big.id}`)).body, large)).toBe(true);
    expect(g.core.fileCached(big.id)).toBe(false);
    expect(g.core.fileCacheBytes).toBeLessThanOrEqual(200 * KiB);

    // a plain GET of a held file is answered before the router: the same reply as the app's
    const f0 = files[4] as (typeof files)[number];
    const viaApp = await fetch(`${g.url}/files/${f0.id}`, { headers: { range: 'bytes=0-' } });
    const viaFast = await fetch(`${g.url}/files/${f0.id}`, { headers: { 'x-request-id': 'fast-1' } });
    expect(viaApp.status).toBe(206);
    expect(viaFast.status).toBe(200);
    expect(same(new Uint8Array(await viaFast.arrayBuffer()), f0.bytes)).toBe(true);
    await viaApp.arrayBuffer();
    const names = (r: Response) =>
      [...r.headers.keys()]
        .filter((k) => !['date', 'content-range', 'keep-alive', 'connection'].includes(k))
        .sort();
    expect(names(viaFast)).toEqual(names(viaApp));
    for (const k of names(viaApp).filter((k) => k !== 'x-request-id'))
      expect(viaFast.headers.get(k), k).toBe(viaApp.headers.get(k));
    expect(viaFast.headers.get('x-request-id')).toBe('fast-1');

    // served from memory: a range, a 304, an If-Range that does not match (200)
    const f = files[5] as (typeof files)[number];
    const hits = await metric(g, 'dsm_gateway_cache_lookups_total\\{cache="file",result="hit"\\}');
    const r = await get(`${g.url}/files/${f.id}`, { range: 'bytes=100-199' });
    expect(r.status).toBe(206);
    expect(same(r.body, f.bytes.subarray(100, 200))).toBe(true);
    const nm = await fetch(`${g.url}/files/${f.id}`, { headers: { 'if-none-match': `"${f.sha256}"` } });
    expect(nm.status).toBe(304);
    const whole = await get(`${g.url}/files/${f.id}`, { range: 'bytes=0-9', 'if-range': '"nope"' });
    expect(whole.status).toBe(200);
    expect(same(whole.body, f.bytes)).toBe(true);
    expect(await metric(g, 'dsm_gateway_cache_lookups_total\\{cache="file",result="hit"\\}')).toBe(hits + 2);
    await g.close();
  });
});

describe('the caches and access rules', () => {
  it('never serve a signed app’s cached file without a valid signature, nor another user’s id', async () => {
    const g = await s.startGateway(CACHING);
    const bytes = patternBytes(8 * KiB, 30);
    const f = await upload(g, bytes, 'secure', 'alice');
    const signed = await signUrl(f.url, { kid: 'k1', secret: KEYS.k1, expiresInSec: 60 });
    const ok = await get(signed);
    expect(ok.status).toBe(200);
    expect(same(ok.body, bytes)).toBe(true);
    expect(g.core.fileCached(f.id)).toBe(true);
    // cached, yet refused without a signature, with a wrong one, or with another path's
    expect((await get(f.url)).status).toBe(401);
    expect((await get(f.url, { range: 'bytes=0-9' })).status).toBe(401);
    const bad = new URL(signed);
    bad.searchParams.set('exp', String(Number(bad.searchParams.get('exp')) + 1));
    expect((await get(bad.toString())).status).toBe(401);
    const other = await signUrl(`${f.url}/x.bin`, { kid: 'k1', secret: KEYS.k1, expiresInSec: 60 });
    expect((await get(other.replace('/x.bin', ''))).status).toBe(401);
    // the same file id under another user or app is another file: not the cached bytes
    const ids = decodePublicId(f.id);
    for (const who of [
      { appId: 'secure', userId: 'mallory', fileId: ids.fileId },
      { appId: 'tnvideo', userId: 'alice', fileId: ids.fileId },
    ]) {
      const r = await get(`${g.url}/files/${encodePublicId(who)}`);
      expect(r.status).toBe(who.appId === 'secure' ? 401 : 404);
    }
    await g.close();
  });
});
