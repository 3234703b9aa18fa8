import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { mintToken, signUrl, TokenVerifier, verifySignedUrl } from './auth.ts';
import { parseGatewayConfig } from './config.ts';
import { evaluatePreconditions, ifRangeAllows, parseRange } from './http-semantics.ts';
import { MultipartReader } from './multipart.ts';
import { toProblem } from './problem.ts';
import { BlockReader } from './streams.ts';
import { parseMetadata } from './tus.ts';

async function* chunksOf(b: Uint8Array, sizes: number[]): AsyncGenerator<Uint8Array> {
  let o = 0;
  let i = 0;
  while (o < b.length) {
    const n = Math.max(1, sizes[i++ % sizes.length] as number);
    yield b.subarray(o, o + n);
    o += n;
  }
}

async function collect(src: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of src) parts.push(Buffer.from(c));
  return Buffer.concat(parts);
}

describe('parseRange', () => {
  it('serves the whole file without a Range header or with another unit', () => {
    expect(parseRange(undefined, 100)).toEqual({ kind: 'none' });
    expect(parseRange('items=0-1', 100)).toEqual({ kind: 'none' });
  });

  it('reads closed, open and suffix ranges and clamps the end', () => {
    expect(parseRange('bytes=0-9', 100)).toEqual({ kind: 'range', start: 0, end: 9 });
    expect(parseRange('bytes=90-', 100)).toEqual({ kind: 'range', start: 90, end: 99 });
    expect(parseRange('bytes=-10', 100)).toEqual({ kind: 'range', start: 90, end: 99 });
    expect(parseRange('bytes=-500', 100)).toEqual({ kind: 'range', start: 0, end: 99 });
    expect(parseRange('bytes=50-5000', 100)).toEqual({ kind: 'range', start: 50, end: 99 });
  });

  it('serves only the first satisfiable range of a multi-range request', () => {
    expect(parseRange('bytes=500-600, 0-1, 5-6', 100)).toEqual({ kind: 'range', start: 0, end: 1 });
  });

  it('refuses unsatisfiable and malformed byte ranges', () => {
    for (const h of ['bytes=100-', 'bytes=-0', 'bytes=5-2', 'bytes=abc', 'bytes=', 'bytes=1-2-3', 'bytes']) {
      expect(parseRange(h, 100)).toEqual({ kind: 'unsatisfiable' });
    }
    expect(parseRange('bytes=0-', 0)).toEqual({ kind: 'unsatisfiable' });
  });

  it('never returns a range outside the file (property)', () => {
    fc.assert(
      fc.property(fc.nat(1000), fc.option(fc.nat(1200)), fc.option(fc.nat(1200)), (size, a, b) => {
        const r = parseRange(`bytes=${a ?? ''}-${b ?? ''}`, size);
        if (r.kind === 'range') {
          expect(r.start).toBeGreaterThanOrEqual(0);
          expect(r.end).toBeLessThan(size);
          expect(r.start).toBeLessThanOrEqual(r.end);
        }
      }),
    );
  });
});

describe('conditional requests', () => {
  const etag = '"abc"';
  const mtime = 1_700_000_000;
  const date = (s: number) => new Date(s * 1000).toUTCString();

  it('answers 304 for a matching If-None-Match (weakly compared) and a fresh If-Modified-Since', () => {
    expect(evaluatePreconditions({ ifNoneMatch: '"x", W/"abc"' }, etag, mtime)).toBe('not-modified');
    expect(evaluatePreconditions({ ifNoneMatch: '*' }, etag, mtime)).toBe('not-modified');
    expect(evaluatePreconditions({ ifNoneMatch: '"x"' }, etag, mtime)).toBe('ok');
    expect(evaluatePreconditions({ ifModifiedSince: date(mtime) }, etag, mtime)).toBe('not-modified');
    expect(evaluatePreconditions({ ifModifiedSince: date(mtime - 1) }, etag, mtime)).toBe('ok');
    // If-None-Match wins over If-Modified-Since
    expect(evaluatePreconditions({ ifNoneMatch: '"x"', ifModifiedSince: date(mtime) }, etag, mtime)).toBe(
      'ok',
    );
  });

  it('fails If-Match unless strongly equal', () => {
    expect(evaluatePreconditions({ ifMatch: '"abc"' }, etag, mtime)).toBe('ok');
    expect(evaluatePreconditions({ ifMatch: 'W/"abc"' }, etag, mtime)).toBe('failed');
    expect(evaluatePreconditions({ ifUnmodifiedSince: date(mtime - 10) }, etag, mtime)).toBe('failed');
  });

  it('applies If-Range only for the same strong tag or date', () => {
    expect(ifRangeAllows(undefined, etag, mtime)).toBe(true);
    expect(ifRangeAllows('"abc"', etag, mtime)).toBe(true);
    expect(ifRangeAllows('"old"', etag, mtime)).toBe(false);
    expect(ifRangeAllows('W/"abc"', etag, mtime)).toBe(false);
    expect(ifRangeAllows(date(mtime), etag, mtime)).toBe(true);
    expect(ifRangeAllows(date(mtime - 5), etag, mtime)).toBe(false);
  });
});

describe('MultipartReader', () => {
  const boundary = '----dsmBoundary7MA4YWxk';
  const file = Buffer.from(Array.from({ length: 70_000 }, (_, i) => (i * 31 + (i >> 7)) & 0xff));
  // the file itself contains a near-delimiter to make sure only the full delimiter ends it
  file.write(`\r\n--${boundary.slice(0, 10)}`, 1000, 'latin1');
  const body = Buffer.concat([
    Buffer.from(
      `preamble\r\n--${boundary}\r\nContent-Disposition: form-data; name="title"\r\n\r\nhello\r\n` +
        `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="a b.mp4"\r\n` +
        'Content-Type: video/mp4\r\n\r\n',
    ),
    file,
    Buffer.from(
      `\r\n--${boundary}\r\nContent-Disposition: form-data; name="after"\r\n\r\nx\r\n--${boundary}--\r\n`,
    ),
  ]);

  it('streams parts out of a body split at any chunk size', async () => {
    for (const sizes of [[1], [7, 3], [4096], [70], [body.length]]) {
      const r = new MultipartReader(chunksOf(body, sizes), boundary);
      const p1 = await r.next();
      expect(p1?.name).toBe('title');
      expect(await MultipartReader.text(p1!)).toBe('hello');
      const p2 = await r.next();
      expect(p2).toMatchObject({ name: 'file', filename: 'a b.mp4', contentType: 'video/mp4' });
      expect((await collect(p2!.body)).equals(file)).toBe(true);
      const p3 = await r.next();
      expect(await MultipartReader.text(p3!)).toBe('x');
      expect(await r.next()).toBeNull();
    }
  });

  it('fails on a body cut off inside a part', async () => {
    const r = new MultipartReader(chunksOf(body.subarray(0, 5000), [999]), boundary);
    await r.next().then((p) => MultipartReader.text(p!));
    const p = await r.next();
    await expect(collect(p!.body)).rejects.toMatchObject({ code: 'DSM_ERR_BODY_INCOMPLETE' });
  });
});

describe('BlockReader', () => {
  it('cuts any chunking into equal blocks and says when the source ended', async () => {
    const data = Buffer.from(Array.from({ length: 10_000 }, (_, i) => i & 0xff));
    for (const sizes of [[1], [333], [4096, 5000], [10_000]]) {
      const r = new BlockReader(chunksOf(data, sizes), 4096);
      const blocks: Uint8Array[] = [];
      for (let b = await r.next(); b; b = await r.next()) blocks.push(b);
      expect(blocks.map((b) => b.length)).toEqual([4096, 4096, 1808]);
      expect(Buffer.concat(blocks).equals(data)).toBe(true);
      expect(r.ended).toBe(true);
    }
  });
});

describe('tus metadata', () => {
  it('decodes base64 values and keys without values', () => {
    const b64 = (s: string) => Buffer.from(s).toString('base64');
    expect(
      parseMetadata(`filename ${b64('vidéo.mp4')},filetype ${b64('video/mp4')},is_confidential`),
    ).toEqual({
      filename: 'vidéo.mp4',
      filetype: 'video/mp4',
      is_confidential: undefined,
    });
    expect(() => parseMetadata('filename ***')).toThrow(/base64/);
    expect(() => parseMetadata('a 1 2')).toThrow(/malformed/);
  });
});

describe('tokens and signed URLs', () => {
  const secret = 'k'.repeat(40);
  const verifier = new TokenVerifier(parseGatewayConfig({ auth: { mode: 'jwt', hs256Secret: secret } }).auth);

  it('accepts a minted token and reads app and sub', async () => {
    const t = await mintToken({ secret, app: 'tnvideo', sub: 'u1' });
    expect(await verifier.principal(`Bearer ${t}`)).toEqual({ appId: 'tnvideo', userId: 'u1' });
  });

  it('refuses missing, expired and tampered tokens with a reason', async () => {
    await expect(verifier.principal(undefined)).rejects.toMatchObject({
      status: 401,
      extra: { reason: 'missing' },
    });
    const old = await mintToken({ secret, app: 'tnvideo', sub: 'u1', ttlSec: -3600 });
    await expect(verifier.principal(`Bearer ${old}`)).rejects.toMatchObject({ extra: { reason: 'expired' } });
    const t = await mintToken({ secret, app: 'tnvideo', sub: 'u1' });
    const [h, , s] = t.split('.');
    const forged = `${h}.${Buffer.from(JSON.stringify({ app: 'tnvideo', sub: 'admin', exp: 9e9 })).toString('base64url')}.${s}`;
    await expect(verifier.principal(`Bearer ${forged}`)).rejects.toMatchObject({
      extra: { reason: 'invalid' },
    });
    const other = await mintToken({ secret: 'z'.repeat(40), app: 'tnvideo', sub: 'u1' });
    await expect(verifier.principal(`Bearer ${other}`)).rejects.toMatchObject({ status: 401 });
  });

  it('verifies asymmetric tokens from a JWKS endpoint next to HS256 ones', async () => {
    const { generateKeyPair, exportJWK, SignJWT } = await import('jose');
    const { publicKey, privateKey } = await generateKeyPair('ES256');
    const jwk = { ...(await exportJWK(publicKey)), kid: 'es1', alg: 'ES256', use: 'sig' };
    const server = createServer((_req, res) => {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ keys: [jwk] }));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    try {
      const jwksUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/jwks.json`;
      const v = new TokenVerifier(
        parseGatewayConfig({ auth: { mode: 'jwt', jwksUrl, hs256Secret: secret, issuer: 'idp' } }).auth,
      );
      const es = await new SignJWT({ app: 'tnvideo' })
        .setProtectedHeader({ alg: 'ES256', kid: 'es1' })
        .setSubject('u7')
        .setIssuer('idp')
        .setExpirationTime('5m')
        .sign(privateKey);
      expect(await v.principal(`Bearer ${es}`)).toEqual({ appId: 'tnvideo', userId: 'u7' });
      const hs = await mintToken({ secret, app: 'tnvideo', sub: 'u8', issuer: 'idp' });
      expect(await v.principal(`Bearer ${hs}`)).toEqual({ appId: 'tnvideo', userId: 'u8' });
      const wrongIssuer = await mintToken({ secret, app: 'tnvideo', sub: 'u8', issuer: 'other' });
      await expect(v.principal(`Bearer ${wrongIssuer}`)).rejects.toMatchObject({ status: 401 });
    } finally {
      server.close();
    }
  });

  it('verifies a signed path, and refuses another path, a tampered or expired signature', async () => {
    const keys = { k1: 's'.repeat(32), k2: 't'.repeat(32) };
    const url = await signUrl('/files/abc', { kid: 'k2', secret: keys.k2, expiresInSec: 60 });
    const q = Object.fromEntries(new URL(url, 'http://x').searchParams);
    await verifySignedUrl('/files/abc', q, keys, 'k1');
    await expect(verifySignedUrl('/files/abd', q, keys, 'k1')).rejects.toMatchObject({ status: 401 });
    await expect(verifySignedUrl('/files/abc', { ...q, kid: 'k1' }, keys, 'k1')).rejects.toMatchObject({
      extra: { reason: 'invalid' },
    });
    await expect(
      verifySignedUrl('/files/abc', { ...q, exp: String(Number(q.exp) + 1) }, keys, 'k1'),
    ).rejects.toThrow();
    await expect(verifySignedUrl('/files/abc', q, keys, 'k1', Number(q.exp) + 1)).rejects.toMatchObject({
      extra: { reason: 'expired' },
    });
    await expect(verifySignedUrl('/files/abc', {}, keys, 'k1')).rejects.toMatchObject({
      extra: { reason: 'missing' },
    });
  });
});

describe('problem mapping', () => {
  it('maps remote errnos and codes to HTTP statuses with stable codes', async () => {
    const { RemoteError } = await import('@dsm/client');
    const { Errno } = await import('@dsm/packets');
    const cases: [number, number, string][] = [
      [Errno.NOT_FOUND, 404, 'DSM_ERR_NOT_FOUND'],
      [Errno.RANGE, 416, 'DSM_ERR_RANGE'],
      [Errno.OFFSET_MISMATCH, 409, 'DSM_ERR_OFFSET_MISMATCH'],
      [Errno.EXISTS, 409, 'DSM_ERR_EXISTS'],
      // a node refusing the gateway's own connection is the gateway's misconfiguration, not the user's
      [Errno.UNAUTHORIZED, 503, 'DSM_ERR_CLUSTER_AUTH'],
      [Errno.TOO_LARGE, 413, 'DSM_ERR_TOO_LARGE'],
      [Errno.NO_STORAGE, 503, 'DSM_ERR_NO_STORAGE'],
      [Errno.DB_UNAVAILABLE, 503, 'DSM_ERR_DB_UNAVAILABLE'],
      [Errno.BAD_FIELD, 400, 'DSM_ERR_BAD_INPUT'],
      [Errno.BUSY, 423, 'DSM_ERR_LOCKED'],
    ];
    for (const [errno, status, code] of cases) {
      const p = toProblem(new RemoteError(errno, 'x'));
      expect([p.status, p.body.code]).toEqual([status, code]);
      expect(p.body.type).toMatch(/^urn:dsm:problem:/);
    }
    expect(toProblem(new Error('boom')).status).toBe(500);
  });
});

describe('config', () => {
  it('fills every default from an empty object', () => {
    const c = parseGatewayConfig({});
    expect(c.listen).toBe('127.0.0.1:8080');
    expect(c.trackers).toEqual(['127.0.0.1:21000']);
    expect(c.auth.mode).toBe('none');
    expect(c.downloads.default).toBe('public');
    expect(c.tusExpiryMs).toBe(24 * 3600 * 1000);
  });

  it('names the bad key', () => {
    expect(() => parseGatewayConfig({ auth: { mode: 'jwt' } })).toThrow(/hs256Secret/);
    expect(() => parseGatewayConfig({ downloads: { default: 'signed' } })).toThrow(/signingKeys/);
    expect(() => parseGatewayConfig({ nope: 1 })).toThrow();
  });
});

describe('runtime neutrality', () => {
  it('keeps node: modules and Node-only packages out of the core (only the Node entry files)', async () => {
    const { readdirSync, readFileSync } = await import('node:fs');
    const dir = new URL('.', import.meta.url);
    const nodeOnly =
      /from '(node:[^']+|@dsm\/common|@dsm\/client\/node|prom-client|@hono\/node-server|ioredis)'/;
    const valueImportOfKv = /^import (?!type )[^;]*from '@dsm\/kv'/m;
    // the Node entry: the single-process server and its hot lane, the node:cluster primary/workers and their IPC
    // cache, prom-client metrics; the core (and the Worker entry) never imports them
    const nodeEntry = ['node.ts', 'hot-lane.ts', 'cluster.ts', 'ipc-kv.ts', 'metrics.ts'];
    const importsNodeEntry = new RegExp(
      `from '\\./(${nodeEntry.map((f) => f.replace('.', '\\.')).join('|')})'`,
    );
    for (const name of readdirSync(dir)) {
      if (!name.endsWith('.ts') || /\.(test|fixture)\.ts$/.test(name) || name === 'test-support.ts') continue;
      if (nodeEntry.includes(name)) continue;
      const text = readFileSync(new URL(name, dir), 'utf8');
      expect(text, name).not.toMatch(nodeOnly);
      expect(text, name).not.toMatch(valueImportOfKv);
      expect(text, name).not.toMatch(importsNodeEntry);
    }
  });
});
