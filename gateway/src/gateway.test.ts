import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mintToken, signUrl } from './auth.ts';
import type { RunningGateway } from './node.ts';
import { curl, parseHead, patternBytes, type Stack, startStack } from './test-support.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const SECRET = 'test-secret-that-is-long-enough-0123456789';
const KEYS = { k1: 'signing-key-one-0123456789abcdef', k2: 'signing-key-two-0123456789abcdef' };

let s: Stack;
let gw: RunningGateway;
/** jwt auth; app "secure" has signed downloads */
let authGw: RunningGateway;

beforeAll(async () => {
  s = await startStack(
    'sqlite+memory',
    { maxUploadBytes: 8 * MiB, uploadBlockBytes: 256 * KiB },
    { appIds: ['tnvideo', 'secure'] },
  );
  gw = s.gateway;
  authGw = await s.startGateway({
    maxUploadBytes: 8 * MiB,
    auth: { mode: 'jwt', hs256Secret: SECRET },
    downloads: { apps: { secure: 'signed' }, signingKeys: KEYS, signingKeyId: 'k1' },
  });
});

afterAll(async () => {
  await s?.stop();
});

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

function tmpFile(name: string, data: Buffer): string {
  const p = join(s.dir, name);
  writeFileSync(p, data);
  return p;
}

async function upload(
  data: Buffer<ArrayBuffer>,
  type = 'application/octet-stream',
  base = gw.url,
  query = '',
) {
  const r = await fetch(`${base}/files${query}`, {
    method: 'POST',
    body: data,
    headers: { 'content-type': type },
  });
  expect(r.status).toBe(201);
  return (await r.json()) as { id: string; url: string; size: number; sha256: string; contentType: string };
}

async function expectProblem(r: Response, status: number, code: string) {
  expect(r.status).toBe(status);
  expect(r.headers.get('content-type')).toBe('application/problem+json');
  const p = (await r.json()) as Record<string, unknown>;
  expect(p).toMatchObject({ status, code });
  expect(typeof p.type).toBe('string');
  expect(typeof p.title).toBe('string');
  expect(typeof p.detail).toBe('string');
  return p;
}

/** Files in the group folders (committed, temp and partial), to prove nothing is left behind. */
async function settledFiles(): Promise<string[]> {
  let last = s.dataFiles();
  for (let i = 0; i < 20; i++) {
    await new Promise((r) => setTimeout(r, 100));
    const now = s.dataFiles();
    if (now.join() === last.join()) return now;
    last = now;
  }
  return last;
}

describe('downloads and REST uploads (curl)', () => {
  const data = patternBytes(2 * MiB + 123, 7);
  let id: string;
  let url: string;

  beforeAll(async () => {
    const file = tmpFile('clip.mp4', data);
    const r = await curl([
      '-X',
      'POST',
      '--data-binary',
      `@${file}`,
      '-H',
      'Content-Type: video/mp4',
      '-w',
      '\n%{http_code}',
      `${gw.url}/files`,
    ]);
    const [json, code] = String(r.stdout).split('\n');
    expect(code).toBe('201');
    const reply = JSON.parse(json as string);
    expect(reply).toMatchObject({ size: data.length, sha256: sha256(data), contentType: 'video/mp4' });
    id = reply.id;
    url = reply.url;
    expect(url).toBe(`${gw.url}/files/${id}`);
  });

  it('serves the whole file with length, strong ETag, type and immutable caching', async () => {
    const head = parseHead(String((await curl(['-I', url])).stdout));
    expect(head.status).toBe(200);
    expect(head.headers).toMatchObject({
      'content-length': String(data.length),
      'content-type': 'video/mp4',
      'accept-ranges': 'bytes',
      'cache-control': 'public, max-age=31536000, immutable',
      etag: `"${sha256(data)}"`,
    });
    expect(Date.parse(head.headers['last-modified'] as string)).toBeGreaterThan(0);
    const body = (await curl([url], { encoding: 'buffer' })).stdout as Buffer;
    expect(body.equals(data)).toBe(true);
  });

  it('serves byte ranges as 206 with Content-Range (curl -r)', async () => {
    for (const [spec, start, end] of [
      ['0-0', 0, 0],
      ['1000-1999', 1000, 1999],
      [`${data.length - 10}-`, data.length - 10, data.length - 1],
      ['-100', data.length - 100, data.length - 1],
      ['2000000-99999999', 2000000, data.length - 1],
    ] as const) {
      const r = await curl(['-D', '-', '-o', join(s.dir, 'part'), '-r', spec, url]);
      const h = parseHead(String(r.stdout));
      expect(h.status).toBe(206);
      expect(h.headers['content-range']).toBe(`bytes ${start}-${end}/${data.length}`);
      expect(h.headers['content-length']).toBe(String(end - start + 1));
      const got = (await curl(['-r', spec, url], { encoding: 'buffer' })).stdout as Buffer;
      expect(got.equals(data.subarray(start, end + 1))).toBe(true);
    }
  });

  it('answers 416 with Content-Range bytes */size and a problem for an unsatisfiable or bad range', async () => {
    for (const range of [`bytes=${data.length}-`, 'bytes=abc', 'bytes=9-3']) {
      const r = await curl(['-i', '-H', `Range: ${range}`, url]);
      const h = parseHead(String(r.stdout));
      expect(h.status).toBe(416);
      expect(h.headers['content-range']).toBe(`bytes */${data.length}`);
      expect(h.headers['content-type']).toBe('application/problem+json');
      const p = JSON.parse(
        String(r.stdout)
          .split(/\r?\n\r?\n/)
          .pop() as string,
      );
      expect(p).toMatchObject({ status: 416, code: 'DSM_ERR_RANGE' });
    }
  });

  it('serves the first range of a multi-range request as a single-part 206', async () => {
    const r = await fetch(url, { headers: { range: 'bytes=10-19, 100-199' } });
    expect(r.status).toBe(206);
    expect(r.headers.get('content-range')).toBe(`bytes 10-19/${data.length}`);
    expect(Buffer.from(await r.arrayBuffer()).equals(data.subarray(10, 20))).toBe(true);
  });

  it('answers If-None-Match and If-Modified-Since with 304 (curl)', async () => {
    const etag = `"${sha256(data)}"`;
    let h = parseHead(String((await curl(['-i', '-H', `If-None-Match: ${etag}`, url])).stdout));
    expect(h.status).toBe(304);
    expect(h.headers.etag).toBe(etag);
    h = parseHead(String((await curl(['-i', '-H', `If-None-Match: "other"`, '-r', '0-0', url])).stdout));
    expect(h.status).toBe(206);
    const lm = parseHead(String((await curl(['-I', url])).stdout)).headers['last-modified'] as string;
    h = parseHead(String((await curl(['-I', '-H', `If-Modified-Since: ${lm}`, url])).stdout));
    expect(h.status).toBe(304);
    const fetched = await fetch(url, { headers: { 'if-match': '"nope"' } });
    await expectProblem(fetched, 412, 'DSM_ERR_PRECONDITION_FAILED');
  });

  it('applies If-Range: a matching validator gets the range, a stale one the whole file', async () => {
    const etag = `"${sha256(data)}"`;
    let r = await curl(['-D', '-', '-o', '/dev/null', '-r', '0-99', '-H', `If-Range: ${etag}`, url]);
    expect(parseHead(String(r.stdout)).status).toBe(206);
    r = await curl(['-D', '-', '-o', '/dev/null', '-r', '0-99', '-H', 'If-Range: "stale"', url]);
    const h = parseHead(String(r.stdout));
    expect(h.status).toBe(200);
    expect(h.headers['content-length']).toBe(String(data.length));
  });

  it('keeps a file name in the path form and answers HEAD without reading the file', async () => {
    const r = await fetch(`${url}/holiday%20clip.mp4`, { method: 'HEAD' });
    expect(r.status).toBe(200);
    expect(r.headers.get('content-length')).toBe(String(data.length));
    expect(r.headers.get('content-disposition')).toBe("inline; filename*=UTF-8''holiday%20clip.mp4");
  });

  it('gives the content type from the extension when the upload had none', async () => {
    const up = await upload(patternBytes(1000, 3), 'application/octet-stream');
    expect(up.contentType).toBe('application/octet-stream');
    const r = await fetch(`${up.url}/song.mp3`, { method: 'HEAD' });
    expect(r.headers.get('content-type')).toBe('audio/mpeg');
  });

  it('returns JSON metadata for a file', async () => {
    const r = await fetch(`${url}/meta`);
    expect(r.status).toBe(200);
    expect(await r.json()).toMatchObject({
      id,
      app: 'tnvideo',
      user: 'tnv001',
      size: data.length,
      sha256: sha256(data),
      contentType: 'video/mp4',
      etag: `"${sha256(data)}"`,
    });
  });

  it('lets a browser player ask for ranges across origins (CORS preflight)', async () => {
    const r = await fetch(url, {
      method: 'OPTIONS',
      headers: {
        origin: 'https://player.example',
        'access-control-request-method': 'GET',
        'access-control-request-headers': 'range',
      },
    });
    expect(r.status).toBe(204);
    expect(r.headers.get('access-control-allow-origin')).toBe('*');
    expect(r.headers.get('access-control-allow-headers')?.toLowerCase()).toContain('range');
    const g = await fetch(url, { headers: { origin: 'https://player.example', range: 'bytes=0-1' } });
    const exposed = g.headers.get('access-control-expose-headers')?.toLowerCase() ?? '';
    for (const h of ['content-range', 'content-length', 'etag', 'accept-ranges'])
      expect(exposed).toContain(h);
    await g.arrayBuffer();
  });

  it('reads the same bytes through another gateway right after the 201', async () => {
    const other = await s.startGateway();
    const up = await upload(patternBytes(300 * KiB, 11));
    const r = await fetch(`${other.url}/files/${up.id}`);
    expect(r.status).toBe(200);
    expect(sha256(Buffer.from(await r.arrayBuffer()))).toBe(up.sha256);
  });

  it('reads no more from the storages than the ranges asked for, however many at once', async () => {
    // 40 ranges at once from one address: more than the default limits.downloadsPerClient (16),
    // whose 429s edge.test covers; here every one must stream, so this gateway allows them.
    const g = await s.startGateway({ limits: { downloadsPerClient: 64 } });
    const before = await bytesOut(g);
    const rs = await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        fetch(`${g.url}/files/${id}`, { headers: { range: `bytes=${i * 1000}-${i * 1000 + 1023}` } }),
      ),
    );
    for (const r of rs) expect(r.status).toBe(206);
    for (const r of rs) expect((await r.arrayBuffer()).byteLength).toBe(1024);
    expect((await bytesOut(g)) - before).toBe(40 * 1024);
  });
});

describe('streaming', () => {
  it('sends a large file only as fast as the client reads it (backpressure, no buffering)', async () => {
    const size = 24 * MiB;
    const big = patternBytes(size, 13);
    const up = await gw.client.upload({
      appId: 'tnvideo',
      userId: 'tnv001',
      source: {
        size,
        async *open() {
          for (let o = 0; o < size; o += MiB) yield big.subarray(o, o + MiB);
        },
      },
    });
    const before = await bytesOut(gw);
    // a client that sends the request and then does not read
    const sock = connect(gw.port, '127.0.0.1');
    await new Promise<void>((r) => sock.once('connect', () => r()));
    sock.write(`GET /files/${up.publicId} HTTP/1.1\r\nHost: x\r\n\r\n`);
    await new Promise((r) => setTimeout(r, 800));
    const sent = (await bytesOut(gw)) - before;
    expect(sent).toBeGreaterThan(0);
    expect(sent).toBeLessThan(size / 2);
    sock.destroy();
    // a client that reads gets every byte
    const r = await fetch(`${gw.url}/files/${up.publicId}`);
    expect(Buffer.from(await r.arrayBuffer()).equals(big)).toBe(true);
  });
});

async function bytesOut(g: RunningGateway): Promise<number> {
  const text = await (await fetch(`${g.adminUrl}/metrics`)).text();
  let n = 0;
  for (const m of text.matchAll(/^dsm_gateway_bytes_out_total\{[^}]*\} (\d+)/gm)) n += Number(m[1]);
  return n;
}

describe('uploads of unknown length', () => {
  it('takes a chunked body longer than a block (curl) and commits it whole', async () => {
    const data = patternBytes(1 * MiB + 77, 5);
    const file = tmpFile('chunked.bin', data);
    const r = await curl([
      '-X',
      'POST',
      '-H',
      'Transfer-Encoding: chunked',
      '-H',
      'Content-Type: application/octet-stream',
      '--data-binary',
      `@${file}`,
      `${gw.url}/files`,
    ]);
    const reply = JSON.parse(String(r.stdout));
    expect(reply).toMatchObject({ size: data.length, sha256: sha256(data) });
    const back = Buffer.from(await (await fetch(reply.url)).arrayBuffer());
    expect(back.equals(data)).toBe(true);
  });

  it('streams the file part of multipart/form-data (curl -F)', async () => {
    const data = patternBytes(700 * KiB + 3, 6);
    const file = tmpFile('form.mp4', data);
    const r = await curl(['-F', 'title=hello', '-F', `file=@${file};type=video/mp4`, `${gw.url}/files`]);
    const reply = JSON.parse(String(r.stdout));
    expect(reply).toMatchObject({ size: data.length, sha256: sha256(data), contentType: 'video/mp4' });
    expect(reply.namedUrl).toBe(`${reply.url}/form.mp4`);
    const small = await curl([
      '-F',
      `upload=@${tmpFile('s.txt', Buffer.from('hi there'))}`,
      `${gw.url}/files`,
    ]);
    expect(JSON.parse(String(small.stdout))).toMatchObject({ size: 8, contentType: 'text/plain' });
  });
});

describe('refusals leave nothing behind', () => {
  it('refuses a declared oversized body with 413 before reading it', async () => {
    const before = await settledFiles();
    const r = await fetch(`${gw.url}/files`, { method: 'POST', body: patternBytes(8 * MiB + 1) });
    await expectProblem(r, 413, 'DSM_ERR_TOO_LARGE');
    expect(await settledFiles()).toEqual(before);
  });

  it('stops a chunked body at the limit with 413 and drops what was stored', async () => {
    const before = await settledFiles();
    const file = tmpFile('big.bin', patternBytes(9 * MiB));
    const r = await curl(
      [
        '-X',
        'POST',
        '-H',
        'Transfer-Encoding: chunked',
        '--data-binary',
        `@${file}`,
        '-w',
        '\n%{http_code}',
        `${gw.url}/files`,
      ],
      { allowFail: true },
    );
    const out = String(r.stdout);
    if (r.code === 0) {
      expect(out.trim().split('\n').pop()).toBe('413');
      expect(JSON.parse(out.slice(0, out.lastIndexOf('\n')))).toMatchObject({ code: 'DSM_ERR_TOO_LARGE' });
    }
    expect(await settledFiles()).toEqual(before);
  });

  it('drops a body cut off midway, of known and of unknown length', async () => {
    const before = await settledFiles();
    const port = gw.port;
    const cut = (head: string, body: Buffer) =>
      new Promise<void>((resolve) => {
        const sock = connect(port, '127.0.0.1', () => {
          sock.write(head);
          sock.write(body, () => setTimeout(() => sock.destroy(), 150));
        });
        sock.on('close', () => resolve());
        sock.on('error', () => resolve());
      });
    await cut(
      'POST /files HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 3000000\r\n\r\n',
      patternBytes(1 * MiB),
    );
    const chunk = patternBytes(700 * KiB);
    await cut(
      'POST /files HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n',
      Buffer.concat([Buffer.from(`${chunk.length.toString(16)}\r\n`), chunk, Buffer.from('\r\n')]),
    );
    await new Promise((r) => setTimeout(r, 300));
    expect(await settledFiles()).toEqual(before);
  });

  it('answers an unknown id with a 404 problem and a malformed one with a 400 problem', async () => {
    const unknown = 'AQd0bnZpZGVvBnRudjAwMSQ2YjA2ZGRmMjA2MzA5YWY0ZTQwNTVjZDRiZjgwNTYwMDAxOTA';
    for (const [id, status, code] of [
      [unknown, 404, 'DSM_ERR_NOT_FOUND'],
      ['not-an-id', 400, 'DSM_ERR_BAD_INPUT'],
      ['x', 400, 'DSM_ERR_BAD_INPUT'],
    ] as const) {
      const r = await curl(['-i', `${gw.url}/files/${id}`]);
      const h = parseHead(String(r.stdout));
      expect(h.status).toBe(status);
      expect(h.headers['content-type']).toBe('application/problem+json');
      expect(
        JSON.parse(
          String(r.stdout)
            .split(/\r?\n\r?\n/)
            .pop() as string,
        ),
      ).toMatchObject({ code });
    }
    await expectProblem(await fetch(`${gw.url}/nothing/here`), 404, 'DSM_ERR_NO_ROUTE');
  });

  it('refuses anonymous deletes in mode none (403 problem); the file stays', async () => {
    const up = await upload(patternBytes(5000, 9));
    await expectProblem(await fetch(up.url, { method: 'DELETE' }), 403, 'DSM_ERR_FORBIDDEN');
    expect((await fetch(up.url)).status).toBe(200);
  });
});

describe('auth: bearer tokens for uploads and deletes, signed URLs for downloads', () => {
  const token = (app: string, sub: string, ttlSec = 600) => mintToken({ secret: SECRET, app, sub, ttlSec });

  it('refuses uploads without a valid token (curl), and takes them with one', async () => {
    const file = tmpFile('auth.bin', patternBytes(10_000, 2));
    const post = async (headers: string[]) => {
      const r = await curl([
        '-i',
        '-X',
        'POST',
        '--data-binary',
        `@${file}`,
        ...headers,
        `${authGw.url}/files`,
      ]);
      const text = String(r.stdout);
      return { ...parseHead(text), body: JSON.parse(text.split(/\r?\n\r?\n/).pop() as string) };
    };
    let r = await post([]);
    expect(r.status).toBe(401);
    expect(r.headers['www-authenticate']).toMatch(/^Bearer/);
    expect(r.body).toMatchObject({ code: 'DSM_ERR_UNAUTHORIZED', reason: 'missing' });
    r = await post(['-H', `Authorization: Bearer ${await token('tnvideo', 'u1', -60)}`]);
    expect(r.body).toMatchObject({ status: 401, reason: 'expired' });
    const good = await token('tnvideo', 'u1');
    const [h, p, sig] = good.split('.');
    const tampered = `${h}.${p}${p?.endsWith('A') ? 'B' : 'A'}.${sig}`;
    r = await post(['-H', `Authorization: Bearer ${tampered}`]);
    expect(r.body).toMatchObject({ status: 401, reason: 'invalid' });
    r = await post(['-H', `Authorization: Bearer ${good}`]);
    expect(r.status).toBe(201);
    expect(r.body.id).toBeTruthy();
  });

  it('lets only the owner delete a file', async () => {
    const owner = await token('tnvideo', 'alice');
    const r = await fetch(`${authGw.url}/files`, {
      method: 'POST',
      body: patternBytes(2000),
      headers: { authorization: `Bearer ${owner}` },
    });
    const { url } = (await r.json()) as { url: string };
    await expectProblem(await fetch(url, { method: 'DELETE' }), 401, 'DSM_ERR_UNAUTHORIZED');
    const mallory = await token('tnvideo', 'mallory');
    await expectProblem(
      await fetch(url, { method: 'DELETE', headers: { authorization: `Bearer ${mallory}` } }),
      403,
      'DSM_ERR_FORBIDDEN',
    );
    expect(
      (await fetch(url, { method: 'DELETE', headers: { authorization: `Bearer ${owner}` } })).status,
    ).toBe(204);
  });

  it('serves a signed app only with a valid, unexpired signature of any live key', async () => {
    const t = await token('secure', 'bob');
    const up = await fetch(`${authGw.url}/files`, {
      method: 'POST',
      body: patternBytes(4096, 4),
      headers: { authorization: `Bearer ${t}` },
    });
    const { url, downloadPolicy } = (await up.json()) as { url: string; downloadPolicy: string };
    expect(downloadPolicy).toBe('signed');
    const plain = await curl(['-i', url]);
    expect(parseHead(String(plain.stdout)).status).toBe(401);
    expect(String(plain.stdout)).toContain('"reason":"missing"');

    for (const kid of ['k1', 'k2'] as const) {
      const signed = await signUrl(url, { kid, secret: KEYS[kid], expiresInSec: 60 });
      const r = await curl(['-D', '-', '-o', '/dev/null', '-r', '0-9', signed]);
      expect(parseHead(String(r.stdout)).status).toBe(206);
    }
    const signed = new URL(await signUrl(url, { kid: 'k1', secret: KEYS.k1, expiresInSec: 60 }));
    const sig = signed.searchParams.get('sig') as string;
    signed.searchParams.set('sig', `${sig.slice(0, -2)}${sig.endsWith('AA') ? 'BB' : 'AA'}`);
    await expectProblem(await fetch(signed), 401, 'DSM_ERR_UNAUTHORIZED');
    const expired = await signUrl(url, {
      kid: 'k1',
      secret: KEYS.k1,
      exp: Math.floor(Date.now() / 1000) - 5,
    });
    const p = await expectProblem(await fetch(expired), 401, 'DSM_ERR_UNAUTHORIZED');
    expect(p.reason).toBe('expired');
    const otherPath = await signUrl(`${url}/x.mp4`, { kid: 'k1', secret: KEYS.k1, expiresInSec: 60 });
    expect((await fetch(otherPath.replace('/x.mp4', ''))).status).toBe(401);
  });
});

describe('operations endpoints', () => {
  it('reports health, readiness and Prometheus metrics', async () => {
    expect(await (await fetch(`${gw.url}/healthz`)).json()).toEqual({ status: 'ok' });
    const ready = await fetch(`${gw.adminUrl}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toMatchObject({ status: 'ready', cache: { ok: true } });
    const m = await (await fetch(`${gw.adminUrl}/metrics`)).text();
    expect(m).toMatch(/dsm_gateway_requests_total\{method="GET",route="\/files\/:id",status="200"\} \d+/);
    expect(m).toContain('dsm_gateway_request_duration_seconds_bucket');
  });

  it('is not ready when no tracker answers', async () => {
    const lonely = await s.startGateway({ trackers: ['127.0.0.1:1'] });
    await expectProblem(await fetch(`${lonely.url}/readyz`), 503, 'DSM_ERR_NOT_READY');
    expect((await fetch(`${lonely.url}/healthz`)).status).toBe(200);
  });
});

describe('storage failure (runs last: it stops a storage)', () => {
  it('serves downloads from the other member of the group when one storage is down', async () => {
    const data = patternBytes(500 * KiB, 17);
    const up = await upload(data);
    await s.cluster.kill('group001-s1');
    for (let i = 0; i < 5; i++) {
      const whole = await fetch(up.url);
      expect(whole.status).toBe(200);
      expect(Buffer.from(await whole.arrayBuffer()).equals(data)).toBe(true);
      const part = await fetch(up.url, { headers: { range: 'bytes=100-199' } });
      expect(part.status).toBe(206);
      expect(Buffer.from(await part.arrayBuffer()).equals(data.subarray(100, 200))).toBe(true);
    }
  });
});
