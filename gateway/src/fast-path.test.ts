import { decodePublicId, encodePublicId } from '@dsm/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FastRequest } from './app.ts';
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
