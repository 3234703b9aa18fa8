import { decodePublicId, encodePublicId } from '@dsm/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FastRequest, FastUpload } from './app.ts';
import { mintToken } from './auth.ts';
import type { GatewayConfigInput } from './config.ts';
import type { RunningGateway } from './node.ts';
import { patternBytes, type Stack, startStack } from './test-support.ts';

// The Node entry answers a GET/HEAD of /files/<id> without the Hono app (app.ts fastFile). Its
// replies must be the app's, byte for byte and header for header: each request below goes to
// the gateway's HTTP listener (the fast path where it applies) and to the same gateway's app in
// process (Hono's router, middlewares and serveFile), and the two answers are compared.

const KiB = 1024;
const SECRET = 'fast-path-test-secret-long-enough-0123456789';
const KEYS = { k1: 'fast-path-signing-key-0123456789abcdef' };
const BASE: GatewayConfigInput = {
  statCacheMs: 300_000,
  auth: { mode: 'jwt', hs256Secret: SECRET, allowAnonymousUploads: true },
  downloads: { apps: { secure: 'signed' }, signingKeys: KEYS, signingKeyId: 'k1' },
  corsOrigins: ['https://player.example'],
  limits: { downloadsPerClient: 1, connectionsPerClient: 64 },
};

let s: Stack;

beforeAll(async () => {
  s = await startStack('sqlite+memory', {}, { appIds: ['tnvideo', 'secure'] });
}, 120_000);

afterAll(async () => {
  await s?.stop();
}, 60_000);

async function upload(g: RunningGateway, bytes: Uint8Array<ArrayBuffer>, app = 'tnvideo') {
  const token = await mintToken({ secret: SECRET, app, sub: 'owner', ttlSec: 600 });
  const r = await fetch(`${g.url}/files`, {
    method: 'POST',
    body: bytes,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'video/mp4' },
  });
  expect(r.status).toBe(201);
  return ((await r.json()) as { id: string }).id;
}

/** Headers that only the HTTP server adds (the in-process app has no connection). */
const SERVER_ONLY = new Set(['date', 'connection', 'keep-alive', 'transfer-encoding']);

async function answer(r: Response) {
  const headers: Record<string, string> = {};
  r.headers.forEach((v, k) => {
    if (!SERVER_ONLY.has(k)) headers[k] = v;
  });
  return { status: r.status, headers, body: Buffer.from(await r.arrayBuffer()).toString('base64') };
}

/** The same request over HTTP and through the app in process: both answers. */
async function both(
  g: RunningGateway,
  path: string,
  init: { method?: string; headers?: Record<string, string> },
) {
  const headers = { 'x-request-id': `fast-${Math.random().toString(36).slice(2)}`, ...init.headers };
  const http = await answer(await fetch(`${g.url}${path}`, { method: init.method ?? 'GET', headers }));
  const app = await answer(await g.app.request(path, { method: init.method ?? 'GET', headers }));
  // the HTTP server counts a body the app left without a length (a problem's text)
  if (app.headers['content-length'] === undefined && http.headers['content-length'] !== undefined) {
    expect(Number(http.headers['content-length'])).toBe(Buffer.from(http.body, 'base64').length);
    delete http.headers['content-length'];
  }
  return { http, app };
}

const CASES: Array<[string, { method?: string; headers?: Record<string, string> }]> = [
  ['plain GET', {}],
  ['HEAD', { method: 'HEAD' }],
  ['a range', { headers: { range: 'bytes=10-99' } }],
  ['a suffix range', { headers: { range: 'bytes=-5' } }],
  ['an open range', { headers: { range: 'bytes=4000-' } }],
  ['an unsatisfiable range', { headers: { range: 'bytes=999999-' } }],
  ['a malformed range (ignored)', { headers: { range: 'bytes=abc' } }],
  ['a CORS origin', { headers: { origin: 'https://player.example' } }],
  ['another origin', { headers: { origin: 'https://evil.example' } }],
  ['If-None-Match (the app)', { headers: { 'if-none-match': '"nope"' } }],
];

describe.each([
  ['small-file cache on', { fileCache: { maxBytes: 1024 * KiB, maxFileBytes: 256 * KiB } }],
  ['small-file cache off', { fileCache: { maxBytes: 0 } }],
])('the fast path, %s', (_name, extra) => {
  let g: RunningGateway;
  let small: string;
  let big: string;

  beforeAll(async () => {
    g = await s.startGateway({ ...BASE, ...extra });
    small = await upload(g, patternBytes(4 * KiB + 7, 1));
    big = await upload(g, patternBytes(300 * KiB, 2));
  }, 60_000);

  it.each(CASES)('answers %s as the app does (small and big file)', async (_c, init) => {
    for (const id of [small, big]) {
      // twice: the second finds the stat (and the small file) cached
      for (let i = 0; i < 2; i++) {
        const { http, app } = await both(g, `/files/${id}`, init);
        expect(http).toEqual(app);
      }
    }
  });

  it('answers an unknown file and a bad id as the app does', async () => {
    const ids = decodePublicId(small);
    const unknown = encodePublicId({ ...ids, fileId: `${ids.fileId.slice(0, -3)}zzz` });
    for (const path of [`/files/${unknown}`, '/files/not-an-id', `/files/${small}x`]) {
      const { http, app } = await both(g, path, {});
      expect(http.status).toBeGreaterThanOrEqual(400);
      expect(http).toEqual(app);
    }
  });

  it('takes only the requests it answers like the app (and gives the download slot back)', async () => {
    const req = (target: string, headers: Record<string, string> = {}, method = 'GET'): FastRequest => ({
      method,
      target,
      header: (n) => headers[n],
      client: '127.0.0.1',
    });
    const secureId = await upload(g, patternBytes(100, 3), 'secure');
    // taken: a GET or HEAD of /files/<id>, with or without a range
    for (const r of [
      req(`/files/${small}`),
      req(`/files/${small}`, { range: 'bytes=0-1' }),
      req(`/files/${small}`, {}, 'HEAD'),
    ]) {
      const p = g.fastFile(r);
      expect(p).not.toBeNull();
      expect((await p)?.status).toBeOneOf([200, 206]);
    }
    // a big file's GET is taken, then handed to the app (it streams)
    expect(await g.fastFile(req(`/files/${big}`))).toBeNull();
    // not taken
    for (const r of [
      req(`/files/${small}?exp=1&kid=k1&sig=x`),
      req(`/files/${small}/name.mp4`),
      req(`/files/${small}/meta`),
      req(`/files/${small}`, { 'if-none-match': '"x"' }),
      req(`/files/${small}`, { 'if-modified-since': 'Sat, 01 Jan 2000 00:00:00 GMT' }),
      req(`/files/${small}`, { 'if-range': '"x"', range: 'bytes=0-1' }),
      req(`/files/${small}`, {}, 'DELETE'),
      req(`/files/${secureId}`), // a signed app
      req('/files/not-an-id'),
    ])
      expect(g.fastFile(r)).toBeNull();
    // a seek in a big file whose stat is cached goes to the app at once (no promise)
    expect(g.fastFile(req(`/files/${big}`, { range: 'bytes=100-99999' }))).toBeNull();
    // downloadsPerClient is 1: every reply above gave its slot back, so this one gets one
    expect(await g.fastFile(req(`/files/${small}`))).toMatchObject({ status: 200 });
    // a client at its download cap is left to the app (which answers the 429)
    const slot = g.core.edgeLimits.takeDownload('127.0.0.1');
    try {
      expect(g.fastFile(req(`/files/${small}`))).toBeNull();
      const r = await fetch(`${g.url}/files/${small}`);
      expect(r.status).toBe(429);
      await r.arrayBuffer();
    } finally {
      slot();
    }
    expect(await g.fastFile(req(`/files/${small}`))).toMatchObject({ status: 200 });
  });
});

// The Node entry takes a small raw POST /files without the app too (app.ts fastUpload): the same
// upload, reply and problems as uploadFile's, compared the same way (ids, dates and the URL's
// origin are each upload's own: the rest must be equal).
describe('the upload fast path', () => {
  let g: RunningGateway;
  let token: string;
  const BYTES = patternBytes(5000, 9);

  beforeAll(async () => {
    g = await s.startGateway({ ...BASE, limits: { ...BASE.limits, concurrentUploads: 1 } });
    token = await mintToken({ secret: SECRET, app: 'tnvideo', sub: 'owner', ttlSec: 600 });
  }, 60_000);

  /** A token's POST of BYTES over HTTP. */
  const postFile = () =>
    fetch(`${g.url}/files`, { method: 'POST', headers: { authorization: `Bearer ${token}` }, body: BYTES });

  /** The same POST over HTTP and to the app in process: both answers, and each reply's JSON. */
  async function postBoth(headers: Record<string, string>, body: Uint8Array<ArrayBuffer>, path = '/files') {
    const h = { 'x-request-id': `up-${Math.random().toString(36).slice(2)}`, ...headers };
    const init = { method: 'POST', headers: h, body };
    const http = await answer(await fetch(`${g.url}${path}`, init));
    const app = await answer(await g.app.request(path, init));
    if (app.headers['content-length'] === undefined && http.headers['content-length'] !== undefined) {
      expect(Number(http.headers['content-length'])).toBe(Buffer.from(http.body, 'base64').length);
      delete http.headers['content-length'];
    }
    const json = (a: { body: string }) => JSON.parse(Buffer.from(a.body, 'base64').toString() || 'null');
    return { http, app, httpJson: json(http), appJson: json(app) };
  }

  /** A 201's fields that differ between two uploads of the same bytes, set aside. */
  function common(a: { headers: Record<string, string> }, j: Record<string, unknown>, origin: string) {
    const { id, url, lastModified, ...rest } = j as { id: string; url: string; lastModified: string };
    expect(url).toBe(`${origin}/files/${id}`);
    expect(a.headers.location).toBe(url);
    expect(Date.parse(lastModified)).toBeGreaterThan(Date.now() - 60_000);
    const { location: _l, ...headers } = a.headers;
    return { headers, rest, id };
  }

  it.each([
    ['a typed body', { 'content-type': 'video/mp4' }],
    ['a typed body with parameters', { 'content-type': 'text/plain; charset=utf-8' }],
    ['an untyped body (sniffed)', {}],
    ['a CORS origin', { origin: 'https://player.example', 'content-type': 'video/mp4' }],
    ['an anonymous body (allowAnonymousUploads)', { authorization: '' }],
  ])('stores %s as the app does', async (_n, headers) => {
    const h: Record<string, string> = { authorization: `Bearer ${token}`, ...headers };
    if (!h.authorization) delete h.authorization;
    const { http, app, httpJson, appJson } = await postBoth(h, BYTES);
    expect(http.status).toBe(201);
    expect(app.status).toBe(201);
    const a = common(http, httpJson, g.url);
    const b = common(app, appJson, 'http://localhost');
    expect(a.headers).toEqual(b.headers);
    expect(a.rest).toEqual(b.rest);
    expect(a.rest).toMatchObject({ size: BYTES.length, downloadPolicy: 'public' });
    // both stored the bytes
    for (const id of [a.id, b.id]) {
      const r = await fetch(`${g.url}/files/${id}`);
      expect(Buffer.from(await r.arrayBuffer()).equals(Buffer.from(BYTES))).toBe(true);
    }
  });

  it.each([
    ['a bad token', { authorization: 'Bearer not.a.token' }],
    [
      'a token of another key',
      { authorization: 'Bearer eyJhbGciOiJIUzI1NiJ9.eyJhcHAiOiJ0bnZpZGVvIn0.c2lnbmF0dXJl' },
    ],
  ])('refuses %s as the app does', async (_n, headers) => {
    const { http, app, httpJson, appJson } = await postBoth(headers, BYTES);
    expect(http.status).toBeGreaterThanOrEqual(400);
    expect(http.status).toBe(app.status);
    expect(http.headers).toEqual(app.headers);
    expect(httpJson).toEqual(appJson);
  });

  it('stores nothing of a body cut short, gives its slot back and goes on (the connection closes mid-body)', async () => {
    const { connect } = await import('node:net');
    const port = Number(new URL(g.url).port);
    const reply = await new Promise<string>((resolve, reject) => {
      const sock = connect(port, '127.0.0.1', () => {
        sock.write(
          `POST /files HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: Bearer ${token}\r\nContent-Length: 5000\r\n\r\n${'x'.repeat(100)}`,
        );
        setTimeout(() => sock.end(), 200); // half-close: the body ends at 100 bytes
      });
      let text = '';
      sock.on('data', (c) => {
        text += c;
      });
      sock.on('close', () => resolve(text));
      sock.on('error', reject);
    });
    // the request never completes: the gateway answers a 400 or just closes
    if (reply) expect(reply).toMatch(/^HTTP\/1\.1 400/);
    // and gives its upload slot back (concurrentUploads is 1)
    const freeSlot = () => {
      try {
        g.core.edgeLimits.takeUpload()();
        return true;
      } catch {
        return false;
      }
    };
    const t0 = Date.now();
    while (!freeSlot() && Date.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 20));
    expect(freeSlot()).toBe(true);
    const m = await (await postFile()).json();
    expect((m as { size: number }).size).toBe(BYTES.length); // the gateway goes on serving
  });

  it('answers an upload refused before its body was read, reads and drops the body, and answers the next request', async () => {
    const { connect } = await import('node:net');
    const port = Number(new URL(g.url).port);
    const body = 'z'.repeat(300 * KiB); // the refusal goes out while most of it is still to come
    const next = `POST /files HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: Bearer ${token}\r\nContent-Length: 5\r\n\r\nafter`;
    const text = await new Promise<string>((resolve, reject) => {
      const sock = connect(port, '127.0.0.1', () => {
        sock.write(
          `POST /files HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: Bearer not.a.token\r\nContent-Length: ${body.length}\r\n\r\n`,
        );
        setTimeout(() => sock.write(body + next), 100);
      });
      let got = '';
      sock.on('data', (c) => {
        got += c;
        if ((got.match(/HTTP\/1\.1 /g) ?? []).length === 2 && got.endsWith('}')) sock.end();
      });
      sock.on('close', () => resolve(got));
      sock.on('error', reject);
      setTimeout(() => sock.destroy(), 5000);
    });
    const statuses = [...text.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => Number(m[1]));
    expect(statuses).toEqual([401, 201]);
    expect(text).toContain('"size":5');
  });

  it('takes only the uploads it answers like the app, and counts them', async () => {
    const req = (target: string, headers: Record<string, string>, method = 'POST'): FastUpload => ({
      method,
      target,
      header: (n) => headers[n],
      client: '127.0.0.1',
      secure: false,
      body: () => (async function* () {})(),
    });
    const ok = { host: '127.0.0.1:9999', 'content-length': '0', authorization: `Bearer ${token}` };
    for (const r of [
      req('/files?filename=a.mp4', ok),
      req('/files/', ok),
      req('/files', ok, 'PUT'),
      req('/files', { ...ok, 'content-type': 'multipart/form-data; boundary=x' }),
      req('/files', { ...ok, 'content-length': undefined as unknown as string }),
      req('/files', { ...ok, 'content-length': 'abc' }),
      req('/files', { ...ok, 'content-length': String(g.core.cfg.maxUploadBytes + 1) }),
      req('/files', { ...ok, 'transfer-encoding': 'chunked' }),
      req('/files', { ...ok, host: 'Example.com' }),
      req('/files', { ...ok, host: undefined as unknown as string }),
    ])
      expect(g.fastUpload(r)).toBeNull();
    // taken: an empty body is stored (0 bytes) and its slot given back
    const empty = await g.fastUpload(req('/files', ok));
    expect(empty?.status).toBe(201);
    expect(JSON.parse(Buffer.from(empty?.body ?? []).toString())).toMatchObject({ size: 0 });
    // concurrentUploads is 1: a gateway at its cap leaves the upload to the app (the 429)
    const slot = g.core.edgeLimits.takeUpload();
    try {
      expect(g.fastUpload(req('/files', ok))).toBeNull();
      const r = await postFile();
      expect(r.status).toBe(429);
      await r.arrayBuffer();
    } finally {
      slot();
    }
    // bytes in and the request count, as the app counts them
    const metric = async (name: string, label: string) => {
      const text = await g.registry.metrics();
      const line = text.split('\n').find((l) => l.startsWith(name) && l.includes(label));
      return Number(line?.split(' ').pop() ?? 0);
    };
    const inBefore = await metric('dsm_gateway_bytes_in_total', 'route="/files"');
    const reqBefore = await metric('dsm_gateway_requests_total', 'status="201"');
    const r = await postFile();
    expect(r.status).toBe(201);
    await r.arrayBuffer();
    expect((await metric('dsm_gateway_bytes_in_total', 'route="/files"')) - inBefore).toBe(BYTES.length);
    expect((await metric('dsm_gateway_requests_total', 'status="201"')) - reqBefore).toBe(1);
  });
});
