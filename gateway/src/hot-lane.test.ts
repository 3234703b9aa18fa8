import { createHash } from 'node:crypto';
import { statSync, truncateSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { until } from '@dsm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LaneBody, parseHead, replyHead } from './hot-lane.ts';
import type { RunningGateway } from './node.ts';
import { patternBytes, type Stack, startStack } from './test-support.ts';

// The hot lane (hot-lane.ts) answers the fast path's GETs and HEADs on a plain connection
// itself and gives the connection to node:http at the first request it does not take. Each
// exchange below runs against a gateway with the lane and one without (`hotLane: false`): the
// replies must be the same, request for request, and the lane must have answered (or not) the
// ones it should.

const KiB = 1024;
const BASE = { statCacheMs: 300_000, limits: { connectionsPerClient: 256, downloadsPerClient: 64 } };

let s: Stack;
let lane: RunningGateway;
let plain: RunningGateway;
let small: string;
let other: string;
const smallBytes = patternBytes(3000, 11);
const otherBytes = patternBytes(5000, 12);
const sockets: Socket[] = [];

beforeAll(async () => {
  s = await startStack('sqlite+memory', BASE);
  lane = s.gateway;
  plain = await s.startGateway({ ...BASE, hotLane: false });
  small = await upload(lane, smallBytes);
  other = await upload(lane, otherBytes);
  // warm both gateways' caches (stat and bytes): their GETs are answered from memory
  for (const g of [lane, plain])
    for (const id of [small, other]) expect((await fetch(`${g.url}/files/${id}`)).status).toBe(200);
}, 120_000);

afterAll(async () => {
  for (const k of sockets) k.destroy();
  await s?.stop();
}, 60_000);

async function upload(g: RunningGateway, bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const r = await fetch(`${g.url}/files`, { method: 'POST', body: bytes });
  expect(r.status).toBe(201);
  return ((await r.json()) as { id: string }).id;
}

interface Reply {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

/**
 * Sends `parts` on one connection (with `gapMs` between them), reads until the gateway closes
 * it or nothing came for `quietMs`, and splits what came back into replies (`methods`: the
 * requests' methods in order, for the replies to HEAD that have no body).
 */
async function exchange(
  g: RunningGateway,
  parts: Array<string | Buffer>,
  methods: string[],
  o: { gapMs?: number; quietMs?: number } = {},
): Promise<{ replies: Reply[]; closed: boolean; inLane: boolean }> {
  const sock = connect({ host: '127.0.0.1', port: g.port });
  sockets.push(sock);
  sock.on('error', () => {});
  const chunks: Buffer[] = [];
  let closed = false;
  let last = Date.now();
  sock.on('data', (d) => {
    chunks.push(d);
    last = Date.now();
  });
  sock.on('close', () => {
    closed = true;
  });
  await new Promise<void>((r) => sock.once('connect', () => r()));
  for (const [i, p] of parts.entries()) {
    if (i > 0 && o.gapMs) await new Promise((r) => setTimeout(r, o.gapMs));
    sock.write(p);
  }
  last = Date.now();
  const quiet = o.quietMs ?? 300;
  while (!closed && Date.now() - last < quiet) await new Promise((r) => setTimeout(r, 20));
  const inLane = g.hotLane?.holds(sock.localPort as number) ?? false;
  sock.destroy();
  return { replies: splitReplies(Buffer.concat(chunks), methods), closed, inLane };
}

function splitReplies(all: Buffer, methods: string[]): Reply[] {
  const out: Reply[] = [];
  let at = 0;
  while (at < all.length) {
    const end = all.indexOf('\r\n\r\n', at, 'latin1');
    if (end < 0) throw new Error(`a reply head without its end: ${all.subarray(at).toString('latin1')}`);
    const lines = all.toString('latin1', at, end).split('\r\n');
    const status = Number((lines[0] as string).split(' ')[1]);
    const headers: Record<string, string> = {};
    for (const l of lines.slice(1)) {
      const c = l.indexOf(':');
      const k = l.slice(0, c).toLowerCase();
      if (k in headers) throw new Error(`header ${k} twice in one reply`);
      headers[k] = l.slice(c + 1).trim();
    }
    const method = methods[out.length] ?? 'GET';
    at = end + 4;
    if (method !== 'HEAD' && headers['transfer-encoding'] === 'chunked') {
      const parts: Buffer[] = [];
      for (;;) {
        const eol = all.indexOf('\r\n', at, 'latin1');
        const n = Number.parseInt(all.toString('latin1', at, eol), 16);
        at = eol + 2 + n + 2;
        if (n === 0) break;
        parts.push(all.subarray(eol + 2, eol + 2 + n));
      }
      out.push({ status, headers, body: Buffer.concat(parts) });
      continue;
    }
    const len = method === 'HEAD' ? 0 : Number(headers['content-length'] ?? 0);
    const body = all.subarray(at, at + len);
    if (body.length !== len) throw new Error(`a reply cut short: ${body.length} of ${len} bytes`);
    out.push({ status, headers, body });
    at += len;
  }
  return out;
}

/** A reply without what differs between two answers to the same request. */
function comparable(r: Reply) {
  const { date, 'x-request-id': id, ...headers } = r.headers;
  // node:http's own 400/431 replies carry no Date
  if (date !== undefined)
    expect(date).toMatch(/^[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT$/);
  // a problem's body names the request id
  const body = id ? Buffer.from(r.body.toString('latin1').replaceAll(id, 'ID'), 'latin1') : r.body;
  return { status: r.status, headers, body: body.toString('base64') };
}

/** The same exchange with the lane and without it: both gateways' replies, compared. */
async function same(parts: string[], methods: string[], o: { gapMs?: number; quietMs?: number } = {}) {
  const a = await exchange(lane, parts, methods, o);
  const b = await exchange(plain, parts, methods, o);
  expect(a.replies.map(comparable)).toEqual(b.replies.map(comparable));
  expect(a.closed).toBe(b.closed);
  return a;
}

const get = (id: string, extra = '') => `GET /files/${id} HTTP/1.1\r\nHost: gw\r\n${extra}\r\n`;

describe('the hot lane answers what node:http would', () => {
  it('pipelined GETs and HEADs of cached files, in order, on a connection that stays in the lane', async () => {
    const head = `HEAD /files/${small} HTTP/1.1\r\nHost: gw\r\n\r\n`;
    const r = await same(
      [get(small) + head + get(other, 'Range: bytes=10-99\r\n') + get(other)],
      ['GET', 'HEAD', 'GET', 'GET'],
    );
    expect(r.replies.map((x) => x.status)).toEqual([200, 200, 206, 200]);
    expect(r.replies[0]?.body.equals(Buffer.from(smallBytes))).toBe(true);
    expect(r.replies[1]?.headers['content-length']).toBe('3000');
    expect(r.replies[1]?.body.length).toBe(0);
    expect(r.replies[2]?.body.equals(Buffer.from(otherBytes.subarray(10, 100)))).toBe(true);
    expect(r.replies[3]?.body.equals(Buffer.from(otherBytes))).toBe(true);
    expect(r.replies[0]?.headers.connection).toBe('keep-alive');
    expect(r.replies[0]?.headers['keep-alive']).toBe('timeout=5');
    expect(r.inLane, 'the connection is still in the lane').toBe(true);
  });

  it('hands the connection to node:http at the first request it does not take, answering the ones before it first', async () => {
    // a file name in the query: the app's upload, not the fast one
    const post = `POST /files?filename=a.txt HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello`;
    const a = await exchange(lane, [get(small) + post + get(other)], ['GET', 'POST', 'GET']);
    expect(a.replies.map((x) => x.status)).toEqual([200, 201, 200]);
    expect(a.replies[0]?.body.equals(Buffer.from(smallBytes))).toBe(true);
    expect(JSON.parse(a.replies[1]?.body.toString() ?? '')).toMatchObject({ size: 5 });
    expect(a.replies[2]?.body.equals(Buffer.from(otherBytes))).toBe(true);
    expect(a.inLane, 'after the POST the connection is node:http’s').toBe(false);
  });

  it('a request with a body framing header goes to node:http whole: the body is not read as a request', async () => {
    // the "body" holds a request for another file: only node:http's framing decides it is a body
    const smuggled = get(other);
    const r = await same(
      [`GET /files/${small} HTTP/1.1\r\nHost: gw\r\nContent-Length: ${smuggled.length}\r\n\r\n${smuggled}`],
      ['GET', 'GET'],
    );
    expect(r.replies.length).toBe(1);
    expect(r.replies[0]?.body.equals(Buffer.from(smallBytes))).toBe(true);
    const chunked = await same(
      [
        `GET /files/${small} HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n${smuggled.length.toString(16)}\r\n${smuggled}\r\n0\r\n\r\n`,
      ],
      ['GET', 'GET'],
    );
    expect(chunked.replies.length).toBe(1);
    expect(chunked.inLane).toBe(false);
  });

  it.each([
    ['a bare LF', `GET /files/SMALL HTTP/1.1\nHost: gw\n\n`],
    ['obsolete line folding', `GET /files/SMALL HTTP/1.1\r\nHost: gw\r\nX-A: 1\r\n  2\r\n\r\n`],
    ['HTTP/1.0', `GET /files/SMALL HTTP/1.0\r\nHost: gw\r\n\r\n`],
    ['no Host', `GET /files/SMALL HTTP/1.1\r\nX-A: 1\r\n\r\n`],
    ['two Hosts', `GET /files/SMALL HTTP/1.1\r\nHost: gw\r\nHost: gw2\r\n\r\n`],
    ['two Ranges', `GET /files/SMALL HTTP/1.1\r\nHost: gw\r\nRange: bytes=0-1\r\nRange: bytes=5-9\r\n\r\n`],
    ['a space before the colon', `GET /files/SMALL HTTP/1.1\r\nHost : gw\r\n\r\n`],
    ['a NUL in a value', `GET /files/SMALL HTTP/1.1\r\nHost: gw\r\nX-A: a\u0000b\r\n\r\n`],
    ['an absolute target', `GET http://gw/files/SMALL HTTP/1.1\r\nHost: gw\r\n\r\n`],
    ['a lower-case method', `get /files/SMALL HTTP/1.1\r\nHost: gw\r\n\r\n`],
    [
      'Connection: upgrade',
      `GET /files/SMALL HTTP/1.1\r\nHost: gw\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n`,
    ],
    ['Expect', `GET /files/SMALL HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\n\r\n`],
    ['a query', `GET /files/SMALL?x=1 HTTP/1.1\r\nHost: gw\r\n\r\n`],
    ['leading empty lines', `\r\n\r\nGET /files/SMALL HTTP/1.1\r\nHost: gw\r\n\r\n`],
  ])('%s: node:http reads it, as without the lane', async (_name, text) => {
    const r = await same([text.replaceAll('SMALL', small) + get(other)], ['GET', 'GET']);
    expect(r.replies.length).toBeGreaterThan(0);
    expect(r.inLane).toBe(false);
  });

  it('a head cut across packets is waited for, and answered when whole', async () => {
    const text = get(small) + get(other);
    const r = await same([text.slice(0, 20), text.slice(20, 60), text.slice(60)], ['GET', 'GET'], {
      gapMs: 100,
    });
    expect(r.replies.map((x) => x.status)).toEqual([200, 200]);
    expect(r.replies[0]?.body.equals(Buffer.from(smallBytes))).toBe(true);
    expect(r.replies[1]?.body.equals(Buffer.from(otherBytes))).toBe(true);
    expect(r.inLane).toBe(true);
  });

  it('a pipelined burst across many packets is answered in order, all in the lane', async () => {
    const n = 3000;
    const ids = Array.from({ length: n }, (_, i) => (i % 3 === 0 ? other : small));
    const r = await exchange(
      lane,
      [ids.map((id) => get(id)).join('')],
      ids.map(() => 'GET'),
      { quietMs: 500 },
    );
    expect(r.replies.length).toBe(n);
    r.replies.forEach((x, i) => {
      expect(x.body.length).toBe(ids[i] === other ? 5000 : 3000);
    });
    expect(r.inLane).toBe(true);
  });

  it('Connection: close is answered and the connection closed, the requests after it unread', async () => {
    const r = await same([get(small, 'Connection: close\r\n')], ['GET']);
    expect(r.replies.map((x) => x.status)).toEqual([200]);
    expect(r.replies[0]?.headers.connection).toBe('close');
    expect(r.closed).toBe(true);
    // node:http answers 400 when bytes follow such a request in the same packet (llhttp's "data
    // after Connection: close"); the lane answers the request and reads nothing after it
    const after = await exchange(lane, [get(small, 'Connection: close\r\n') + get(other)], ['GET', 'GET']);
    expect(after.replies.map((x) => x.status)).toEqual([200]);
    expect(after.replies[0]?.body.equals(Buffer.from(smallBytes))).toBe(true);
    expect(after.closed).toBe(true);
  });

  it('an uncached file (a reply that waits for the storages) keeps the order of pipelined replies', async () => {
    const fresh = await upload(plain, patternBytes(70 * KiB, 13)); // bigger than a small body: streams
    const third = await upload(plain, patternBytes(2000, 14));
    const r = await same([get(third) + get(small) + get(fresh) + get(small)], ['GET', 'GET', 'GET', 'GET']);
    expect(r.replies.map((x) => x.body.length)).toEqual([2000, 3000, 70 * KiB, 3000]);
    expect(r.replies[0]?.body.equals(Buffer.from(patternBytes(2000, 14)))).toBe(true);
  });

  it('a head past maxHeaderBytes gets node:http’s 431', async () => {
    const r = await same([get(small, `X-Big: ${'a'.repeat(20 * KiB)}\r\n`)], ['GET'], { quietMs: 500 });
    expect(r.replies.map((x) => x.status)).toEqual([431]);
  });
});

/** The head of a raw upload of `len` bytes. */
const postHead = (len: number | string, extra = '') =>
  `POST /files HTTP/1.1\r\nHost: gw\r\nContent-Length: ${len}\r\nContent-Type: application/octet-stream\r\n${extra}\r\n`;

const sha256Hex = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** A raw connection to `g`, connected, keeping all it is sent in `got.text`. */
async function rawClient(g: RunningGateway, allowHalfOpen = false) {
  const sock = connect({ host: '127.0.0.1', port: g.port, allowHalfOpen });
  sockets.push(sock);
  sock.on('error', () => {});
  const got = { text: '' };
  sock.on('data', (d) => {
    got.text += d.toString('latin1');
  });
  await new Promise<void>((r) => sock.once('connect', () => r()));
  return { sock, got };
}

/** The uploads' JSON replies: what differs between two uploads of the same bytes set aside. */
function uploaded(r: Reply | undefined) {
  expect(r?.status).toBe(201);
  const { id, url, lastModified, ...rest } = JSON.parse(r?.body.toString() ?? '') as Record<string, string>;
  const { date, 'x-request-id': _id, location, ...headers } = r?.headers ?? {};
  expect(location).toBe(url);
  return { id: id as string, rest, headers };
}

describe('the hot lane reads a raw upload’s body itself', () => {
  it('a POST is stored byte-exact, its reply is node:http’s, and the request after its body is answered in the lane', async () => {
    // the body holds a request: only the Content-Length decides it is a body
    const body = Buffer.from(get(other) + get(other), 'latin1');
    const parts = [postHead(body.length) + body.toString('latin1') + get(small)];
    const a = await exchange(lane, parts, ['POST', 'GET']);
    const b = await exchange(plain, parts, ['POST', 'GET']);
    expect(a.replies.map((x) => x.status)).toEqual([201, 200]);
    expect(b.replies.map((x) => x.status)).toEqual([201, 200]);
    const ua = uploaded(a.replies[0]);
    const ub = uploaded(b.replies[0]);
    expect(ua.rest).toEqual(ub.rest);
    expect(ua.rest.sha256).toBe(sha256Hex(body));
    expect(ua.headers).toEqual({ ...ub.headers, 'content-length': ua.headers['content-length'] });
    expect(a.replies[1]?.body.equals(Buffer.from(smallBytes))).toBe(true);
    expect(a.inLane, 'the connection is still in the lane').toBe(true);
    const back = await fetch(`${lane.url}/files/${ua.id}`);
    expect(Buffer.from(await back.arrayBuffer()).equals(body)).toBe(true);
  });

  it('a body of many packets, pipelined uploads and an empty body', async () => {
    const big = Buffer.from(patternBytes(3 * 1024 * KiB, 21));
    const parts = [
      Buffer.concat([Buffer.from(postHead(big.length)), big, Buffer.from(postHead(0) + postHead(3) + 'abc')]),
    ];
    const a = await exchange(lane, parts, ['POST', 'POST', 'POST'], { quietMs: 1000 });
    expect(a.replies.map((x) => x.status)).toEqual([201, 201, 201]);
    expect(uploaded(a.replies[0]).rest).toMatchObject({ size: big.length, sha256: sha256Hex(big) });
    expect(uploaded(a.replies[1]).rest).toMatchObject({ size: 0 });
    expect(uploaded(a.replies[2]).rest).toMatchObject({ size: 3, sha256: sha256Hex(Buffer.from('abc')) });
    expect(a.inLane).toBe(true);
  });

  it('Expect: 100-continue is answered before the body, as node:http answers it', async () => {
    const body = 'x'.repeat(1000);
    const parts = [postHead(body.length, 'Expect: 100-continue\r\n'), body];
    const a = await exchange(lane, parts, ['POST', 'POST'], { gapMs: 200 });
    const b = await exchange(plain, parts, ['POST', 'POST'], { gapMs: 200 });
    expect(a.replies.map((x) => x.status)).toEqual([100, 201]);
    expect(b.replies.map((x) => x.status)).toEqual([100, 201]);
    expect(a.replies[0]?.headers).toEqual(b.replies[0]?.headers);
    expect(uploaded(a.replies[1]).rest).toEqual(uploaded(b.replies[1]).rest);
    expect(a.inLane).toBe(true);
  });

  it.each([
    ['a Content-Length with a sign', postHead('+5')],
    ['two Content-Lengths', postHead(5, 'Content-Length: 5\r\n')],
    ['Content-Length and Transfer-Encoding', postHead(5, 'Transfer-Encoding: chunked\r\n')],
    ['another Expect', postHead(5, 'Expect: 200-ok\r\n')],
  ])('%s goes to node:http', async (_name, head) => {
    const r = await same([`${head}hello${get(small)}`], ['POST', 'GET'], { quietMs: 500 });
    expect(r.inLane).toBe(false);
  });

  it('a chunked upload goes to node:http and is stored', async () => {
    const parts = [
      `POST /files HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n`,
    ];
    const a = await exchange(lane, parts, ['POST']);
    expect(uploaded(a.replies[0]).rest).toMatchObject({ size: 5, sha256: sha256Hex(Buffer.from('hello')) });
    expect(a.inLane).toBe(false);
  });

  it('a body that stops coming is cut after bodyIdleMs, and the upload given up (its slot freed)', async () => {
    const g = await s.startGateway({
      ...BASE,
      timeouts: { bodyIdleMs: 400 },
      limits: { ...BASE.limits, concurrentUploads: 1 },
    });
    try {
      const { sock, got } = await rawClient(g);
      const t0 = Date.now();
      const closed = new Promise<number>((r) => sock.on('close', () => r(Date.now() - t0)));
      sock.write(`${postHead(100_000)}${'y'.repeat(5000)}`);
      const ms = await closed;
      expect(ms).toBeGreaterThanOrEqual(300);
      expect(ms).toBeLessThan(3000);
      expect(got.text, 'no reply to a body that never came').toBe('');
      // the upload's slot (concurrentUploads: 1) is free again: the next upload is stored
      const t1 = Date.now();
      let status = 0;
      while (Date.now() - t1 < 5000) {
        const r = await fetch(`${g.url}/files`, { method: 'POST', body: 'after' });
        status = r.status;
        await r.arrayBuffer();
        if (status === 201) break;
        await new Promise((r2) => setTimeout(r2, 100));
      }
      expect(status).toBe(201);
    } finally {
      await g.close();
    }
  }, 20_000);

  it('a body cut short by the client is answered 400 BODY_INCOMPLETE, and the gateway goes on serving', async () => {
    const { sock, got } = await rawClient(lane, true);
    const closed = new Promise<void>((r) => sock.on('close', () => r()));
    const partial = Buffer.from(patternBytes(200 * KiB, 22));
    sock.write(Buffer.concat([Buffer.from(postHead(1024 * KiB)), partial]));
    await new Promise((r) => setTimeout(r, 200));
    const t0 = Date.now();
    sock.end(); // FIN with 824 KiB of the body missing
    await closed;
    // answered and closed at once, not held until bodyIdleMs (30 s)
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(got.text).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    expect(got.text).toContain(`"code":"DSM_ERR_BODY_INCOMPLETE"`);
    const after = await fetch(`${lane.url}/files/${small}`);
    expect(after.status).toBe(200);
    await after.arrayBuffer();
  });
});

describe('the hot lane streams big files', () => {
  const MiB = 1024 * 1024;
  /** A raw GET of `id` from `g` that reads at least `take` bytes (head included), then pauses. */
  async function partial(g: RunningGateway, id: string, take: number) {
    const sock = connect({ host: '127.0.0.1', port: g.port });
    sockets.push(sock);
    sock.on('error', () => {});
    const chunks: Buffer[] = [];
    let got = 0;
    let paused = false;
    let closed = false;
    sock.on('close', () => {
      closed = true;
    });
    await new Promise<void>((r) => sock.once('connect', () => r()));
    await new Promise<void>((r) => {
      sock.on('data', (d) => {
        chunks.push(d);
        got += d.length;
        if (got >= take && !paused) {
          paused = true;
          sock.pause();
          r();
        }
      });
      sock.write(get(id));
    });
    return { sock, all: () => Buffer.concat(chunks), closed: () => closed };
  }

  /**
   * GETs `id` every 50 ms for up to 2 s until one is answered 200 (its body, when `bytes` are
   * given, checked whole); the last status.
   */
  async function getOnceFree(g: RunningGateway, id: string, bytes?: Uint8Array): Promise<number> {
    let status = 0;
    for (let i = 0; i < 40 && status !== 200; i++) {
      await new Promise((r) => setTimeout(r, 50));
      const res = await fetch(`${g.url}/files/${id}`);
      status = res.status;
      const body = Buffer.from(await res.arrayBuffer());
      if (status === 200 && bytes) expect(body.equals(Buffer.from(bytes))).toBe(true);
    }
    return status;
  }

  it('a whole big file and a long range of it stream in the lane, byte-exact, and the connection stays in the lane for the next request', async () => {
    // past rangeCache.maxReplyBytes (16 MiB): neither is served from coalesced slices
    const bytes = patternBytes(18 * MiB, 21);
    const big = await upload(lane, bytes);
    const r = await same(
      [get(big) + get(big, 'Range: bytes=1000-17000999\r\n') + get(small)],
      ['GET', 'GET', 'GET'],
      { quietMs: 1000 },
    );
    expect(r.replies.map((x) => x.status)).toEqual([200, 206, 200]);
    expect(r.replies[0]?.headers['content-length']).toBe(String(18 * MiB));
    expect(r.replies[0]?.body.equals(Buffer.from(bytes))).toBe(true);
    expect(r.replies[1]?.headers['content-range']).toBe(`bytes 1000-17000999/${18 * MiB}`);
    expect(r.replies[1]?.body.equals(Buffer.from(bytes.subarray(1000, 17_001_000)))).toBe(true);
    expect(r.replies[2]?.body.equals(Buffer.from(smallBytes))).toBe(true);
    expect(r.inLane, 'the connection is still in the lane').toBe(true);
  }, 60_000);

  it('a client that goes away midway frees its download slot', async () => {
    const g = await s.startGateway({ ...BASE, limits: { connectionsPerClient: 16, downloadsPerClient: 1 } });
    const big = await upload(g, patternBytes(24 * MiB, 22));
    const first = await partial(g, big, 64 * 1024);
    // the one slot is taken while it streams
    expect((await fetch(`${g.url}/files/${big}`)).status).toBe(429);
    first.sock.destroy();
    expect(await getOnceFree(g, big), 'a GET after the first client left').toBe(200);
    await g.close();
  }, 60_000);

  it('a client that leaves before its reply’s head frees its download slot and storage connection', async () => {
    const g = await s.startGateway({
      ...BASE,
      upstreamConnections: 1,
      limits: { connectionsPerClient: 16, downloadsPerClient: 1 },
      timeouts: { upstreamQueueMs: 2000 },
    });
    const bytes = patternBytes(20 * MiB, 25);
    const big = await upload(g, bytes);
    // the request goes out and the connection is reset while its reply is made (the storage's
    // answer takes a few ms): the reply is made for no one
    for (let i = 0; i < 20; i++) {
      const sock = connect({ host: '127.0.0.1', port: g.port });
      sockets.push(sock);
      sock.on('error', () => {});
      await new Promise<void>((r) => sock.once('connect', () => r()));
      sock.write(get(big));
      await new Promise((r) => setTimeout(r, i % 3));
      sock.resetAndDestroy();
      await new Promise((r) => setTimeout(r, 5));
    }
    expect(await getOnceFree(g, big, bytes), 'a whole GET after 20 clients left').toBe(200);
    await g.close();
  }, 60_000);

  it('a client that stops reading gives its storage connection back, and gets the rest when it reads on', async () => {
    // one upstream connection per storage and no download cut for a minute: only the release
    // after upstreamReleaseMs can free them for others
    const g = await s.startGateway({
      ...BASE,
      upstreamConnections: 1,
      timeouts: { downloadIdleMs: 60_000, upstreamReleaseMs: 200, upstreamQueueMs: 2000 },
    });
    const size = 24 * MiB;
    const bytes = patternBytes(size, 24);
    const big = await upload(g, bytes);
    const stalled = [await partial(g, big, 1), await partial(g, big, 1)];
    await new Promise((r) => setTimeout(r, 600));
    const t0 = Date.now();
    const r = await fetch(`${g.url}/files/${big}`);
    expect(r.status).toBe(200);
    expect(Buffer.from(await r.arrayBuffer()).equals(Buffer.from(bytes))).toBe(true);
    expect(Date.now() - t0, 'ms for a whole GET while two readers stall').toBeLessThan(2000);
    for (const c of stalled) {
      c.sock.resume();
      await until(() => c.all().length > size, 10_000, 20);
      const all = c.all();
      const body = all.subarray(all.indexOf('\r\n\r\n') + 4);
      expect(body.equals(Buffer.from(bytes))).toBe(true);
    }
    await g.close();
  }, 60_000);

  it('a storage that fails midway cuts the connection (a short body, never a wrong one), and the gateway goes on serving', async () => {
    // the stalled reader's storage stream is closed after 200 ms; when it reads on, the rest is
    // asked again from a file that has been cut short on disk meanwhile
    const g = await s.startGateway({
      ...BASE,
      timeouts: { downloadIdleMs: 60_000, upstreamReleaseMs: 200 },
    });
    const size = 40 * MiB;
    const bytes = patternBytes(size, 23);
    const before = new Set(s.dataFiles());
    const big = await upload(g, bytes);
    // the file's bytes on disk (a shared group folder: one file, maybe hard-linked)
    const stored = s
      .dataFiles()
      .filter((f) => !before.has(f))
      .map((f) => join(s.dir, 'data', f))
      .filter((f) => statSync(f).size === size);
    expect(stored.length).toBeGreaterThan(0);
    const c = await partial(g, big, 1);
    await new Promise((r) => setTimeout(r, 800));
    for (const f of stored) truncateSync(f, MiB);
    c.sock.resume();
    await until(c.closed, 10_000, 20);
    const all = c.all();
    const end = all.indexOf('\r\n\r\n');
    expect(all.toString('latin1', 0, end)).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(all.toString('latin1', 0, end)).toContain(`Content-Length: ${size}`);
    const body = all.subarray(end + 4);
    expect(body.length, 'body bytes before the cut').toBeGreaterThan(0);
    expect(body.length).toBeLessThan(size);
    // what came is the file's own bytes, from its start
    expect(body.equals(Buffer.from(bytes.subarray(0, body.length)))).toBe(true);
    const head = await fetch(`${g.url}/files/${small}`);
    expect(head.status).toBe(200);
    expect(Buffer.from(await head.arrayBuffer()).equals(Buffer.from(smallBytes))).toBe(true);
    await g.close();
  }, 60_000);
});

describe('the hot lane’s bounds', () => {
  it('a client that pipelines without reading stops being read: the replies it is owed wait in the kernel, not in the gateway', async () => {
    const count = (g: RunningGateway) =>
      g.registry.getSingleMetric('dsm_gateway_requests_total') as unknown as {
        get(): Promise<{ values: Array<{ value: number; labels: Record<string, string> }> }>;
      };
    const answered = async () =>
      (await count(lane).get()).values
        .filter((v) => v.labels.route === '/files/:id' && v.labels.method === 'GET')
        .reduce((a, v) => a + v.value, 0);
    const before = await answered();
    const sock = connect({ host: '127.0.0.1', port: lane.port });
    sockets.push(sock);
    sock.on('error', () => {});
    await new Promise<void>((r) => sock.once('connect', () => r()));
    sock.pause(); // never reads
    const one = get(other); // 5,000-byte replies
    const n = 40_000; // ~3.5 MB of requests, ~200 MB of replies
    sock.write(one.repeat(n));
    await new Promise((r) => setTimeout(r, 1500));
    const done = (await answered()) - before;
    expect(done, 'replies written while the client read nothing').toBeGreaterThan(0);
    // the socket buffers (both sides) hold a few MiB of replies at most
    expect(done).toBeLessThan(4000);
    expect(lane.hotLane?.holds(sock.localPort as number), 'the connection stayed in the lane').toBe(true);
    sock.destroy();
  }, 20_000);

  it('an idle connection in the lane is closed after keepAliveMs, one that sends nothing after headersMs', async () => {
    const g = await s.startGateway({ ...BASE, timeouts: { keepAliveMs: 300, headersMs: 600 } });
    expect((await fetch(`${g.url}/files/${small}`)).status).toBe(200);
    const t0 = Date.now();
    const after = await exchange(g, [get(small)], ['GET'], { quietMs: 5000 });
    expect(after.closed).toBe(true);
    expect(Date.now() - t0).toBeLessThan(2000);
    const silent = connect({ host: '127.0.0.1', port: g.port });
    sockets.push(silent);
    silent.on('error', () => {});
    const t1 = Date.now();
    const ms = await new Promise<number>((r) => silent.on('close', () => r(Date.now() - t1)));
    expect(ms).toBeGreaterThanOrEqual(500);
    expect(ms).toBeLessThan(3000);
    await g.close();
  }, 20_000);

  it('a head that drips in is cut after headersMs, as node:http cuts it', async () => {
    const g = await s.startGateway({ ...BASE, timeouts: { headersMs: 600 } });
    // a client that never closes its side: the gateway must close the socket, not only end it
    const { sock, got } = await rawClient(g, true);
    const t0 = Date.now();
    // the gateway's FIN, then a write of ours: reset by a closed socket, taken by one only ended
    const closed = new Promise<number>((r) => {
      sock.on('close', () => r(Date.now() - t0));
      sock.on('end', () => {
        const poke = setInterval(() => {
          if (sock.destroyed) clearInterval(poke);
          else sock.write('x');
        }, 100);
      });
    });
    const text = `${get(small, 'X-Pad: '.padEnd(200, 'a'))}`;
    let i = 0;
    const drip = setInterval(() => {
      if (i < text.length && !sock.destroyed) sock.write(text[i++] as string);
    }, 50);
    const ms = await closed;
    clearInterval(drip);
    expect(ms).toBeGreaterThanOrEqual(500);
    expect(ms).toBeLessThan(2500);
    expect(got.text).toMatch(/^HTTP\/1\.1 408 /);
    await g.close();
  }, 20_000);

  it('close() ends the lane’s idle connections', async () => {
    const g = await s.startGateway(BASE);
    expect((await fetch(`${g.url}/files/${small}`)).status).toBe(200);
    const sock = connect({ host: '127.0.0.1', port: g.port });
    sockets.push(sock);
    sock.on('error', () => {});
    sock.on('data', () => {});
    const closed = new Promise<void>((r) => sock.on('close', () => r()));
    await new Promise<void>((r) => sock.once('connect', () => r()));
    sock.write(get(small));
    while ((g.hotLane?.size ?? 0) === 0) await new Promise((r) => setTimeout(r, 10));
    const t0 = Date.now();
    await g.close();
    await closed;
    expect(Date.now() - t0).toBeLessThan(1500);
  }, 20_000);
});

describe('LaneBody', () => {
  /** A socket as LaneBody uses it: only pause and resume, counted. */
  const fakeSocket = () => {
    const s = { paused: false, pauses: 0, resumes: 0 };
    const sock = {
      pause() {
        s.paused = true;
        s.pauses++;
      },
      resume() {
        s.paused = false;
        s.resumes++;
      },
    };
    return { s, sock: sock as unknown as Socket };
  };

  it('holds a chunk no one reads with the socket paused, and resumes it when the reader takes it', async () => {
    const { s, sock } = fakeSocket();
    const body = new LaneBody(10, sock);
    expect(body.feed(Buffer.from('abcd'))).toBeNull();
    expect(s.paused, 'a waiting chunk pauses the socket').toBe(true);
    const first = await body.next();
    expect(Buffer.from(first.value as Uint8Array).toString()).toBe('abcd');
    expect(s.paused, 'taken: the socket reads again').toBe(false);
    // the rest and the next request's bytes in one packet: only the body's part is the body's
    const next = body.feed(Buffer.from('efghijGET /'));
    expect(next?.toString()).toBe('GET /');
    expect(body.complete).toBe(true);
    expect(s.paused, 'a complete body does not resume the socket').toBe(true);
    expect(Buffer.from((await body.next()).value as Uint8Array).toString()).toBe('efghij');
    expect(s.paused).toBe(true);
    expect((await body.next()).done).toBe(true);
    expect(body.received).toBe(10);
  });

  it('throws BODY_INCOMPLETE to its reader when the connection ends short, and drops what comes after discard', async () => {
    const { s, sock } = fakeSocket();
    const short = new LaneBody(10, sock);
    const waiting = short.next();
    short.feed(Buffer.from('abc')); // to the waiting reader
    expect((await waiting).value?.length).toBe(3);
    const more = short.next();
    short.fail();
    await expect(more).rejects.toMatchObject({ code: 'DSM_ERR_BODY_INCOMPLETE' });
    const dropped = new LaneBody(10, sock);
    dropped.feed(Buffer.from('abc'));
    dropped.discard();
    expect(s.paused, 'dropping reads on').toBe(false);
    expect(dropped.feed(Buffer.from('defghijXY'))?.toString()).toBe('XY');
    expect(dropped.complete).toBe(true);
    expect((await dropped.next()).done).toBe(true);
  });
});

describe('parseHead and replyHead', () => {
  it('reads the plain request forms', () => {
    expect(parseHead('GET /files/a HTTP/1.1\r\nHost: x\r\nRange:  bytes=1-2 \t')).toEqual({
      method: 'GET',
      target: '/files/a',
      names: ['host', 'range'],
      values: ['x', 'bytes=1-2'],
      close: false,
      length: 0,
      expect: false,
    });
    expect(parseHead('HEAD /files/a HTTP/1.1\r\nhost: x\r\nConnection: Keep-Alive, close')?.close).toBe(true);
    expect(parseHead('GET /files/a HTTP/1.1\r\nHost: x\r\nX-Empty:')?.values).toEqual(['x', '']);
  });

  it('reads a POST framed by one plain Content-Length', () => {
    expect(parseHead('POST /files HTTP/1.1\r\nHost: x\r\nContent-Length: 12')).toMatchObject({
      method: 'POST',
      length: 12,
      expect: false,
    });
    expect(
      parseHead('POST /files HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nExpect: 100-Continue'),
    ).toMatchObject({ length: 0, expect: true });
    expect(parseHead('GET /files/a HTTP/1.1\r\nHost: x')).toMatchObject({ length: 0, expect: false });
  });

  it.each([
    'POST /files HTTP/1.1\r\nHost: x',
    'POST /files HTTP/1.1\r\nHost: x\r\nContent-Length: +1',
    'POST /files HTTP/1.1\r\nHost: x\r\nContent-Length: 1,1',
    'POST /files HTTP/1.1\r\nHost: x\r\nContent-Length: 0x10',
    'POST /files HTTP/1.1\r\nHost: x\r\nContent-Length: 1234567890123456',
    'POST /files HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\ncontent-length: 1',
    'POST /files HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked',
    'POST /files HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nExpect: 100-continue, x',
    'GET /files/a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue',
    'PUT /files HTTP/1.1\r\nHost: x\r\nContent-Length: 1',
    'GET /files/a HTTP/1.1\r\nHost: x\r\nContent-Length: 0',
    'GET /files/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked',
    'GET /files/a HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade',
    'GET /files/a HTTP/1.1\r\nHost: x\r\nX\r\n',
    'GET /files/a HTTP/1.1\r\nHost: x\r\n:x',
    'GET /files/a HTTP/1.1\r\nHost: x\rX-A: 1',
    'GET /files/a HTTP/1.1\r\nHost: x\r\nX-A: a\rb',
    'GET /files/a HTTP/1.1\r\nHost: x\r\nX-A: \u007f',
    'GET /files/a HTTP/1.1\r\nHost: x\r\nX(A): 1',
    'GET /files/a  HTTP/1.1\r\nHost: x',
    'GET /files/\u00e9 HTTP/1.1\r\nHost: x',
    'GET /files/a HTTP/1.10\r\nHost: x',
    `GET /files/a HTTP/1.1\r\nHost: x${'\r\nX-A: 1'.repeat(70)}`,
  ])('leaves %j to node:http', (text) => {
    expect(parseHead(text)).toBeNull();
  });

  it('writes node:http’s reply head, and leaves to node:http the replies it does not write itself', () => {
    const head = replyHead(
      {
        status: 206,
        headers: { 'Content-Range': 'bytes 0-1/9', 'content-length': '2' },
        body: new Uint8Array(2),
      },
      false,
      5,
      '77',
    );
    expect(head).toMatch(
      /^HTTP\/1\.1 206 Partial Content\r\nX-Dsm-Worker: 77\r\nContent-Range: bytes 0-1\/9\r\ncontent-length: 2\r\nDate: [^\r]+ GMT\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n$/,
    );
    // no Content-Length: the body's
    expect(replyHead({ status: 404, headers: {}, body: new Uint8Array(7) }, true, 5, undefined)).toMatch(
      /^HTTP\/1\.1 404 Not Found\r\nContent-Length: 7\r\nDate: [^\r]+\r\nConnection: close\r\n\r\n$/,
    );
    for (const headers of [
      { 'X-A': 'a\r\nSet-Cookie: x=1' },
      { 'X-A': 'caf\u00e9' },
      { 'X-A': '\u{1f600}' },
      { 'X A': '1' },
      { Connection: 'close' },
      { 'Transfer-Encoding': 'chunked' },
    ] as Array<Record<string, string>>)
      expect(replyHead({ status: 200, headers, body: null }, false, 5, undefined)).toBeNull();
    expect(replyHead({ status: 599, headers: {}, body: null }, false, 5, undefined)).toBeNull();
  });
});
