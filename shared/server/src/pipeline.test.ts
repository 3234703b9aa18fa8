/**
 * Pipelined small requests (@dsm/client pipeline.ts, Pool.request) against the real
 * ProtocolServer: order, byte-exact replies, an error reply in the middle, a slow request, a
 * silent server, a lying server, the depth bound, and the cluster-key handshake first.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { type ClusterKey, hmacSha256, Pool, RemoteError } from '@dsm/client';
import { nodeTransport } from '@dsm/client/node';
import { createLogger, DsmError } from '@dsm/common';
import {
  AUTH_NONCE_LENGTH,
  AUTH_SERVER_LABEL,
  authTranscript,
  Command,
  decodeAuthProve,
  decodeDownloadRequest,
  Errno,
  encodeDownloadRequest,
  encodeFrame,
  encodeHeader,
  exactly,
  HEADER_LENGTH,
  Status,
} from '@dsm/packets';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { type Handler, ProtocolServer } from './protocol-server.ts';
import { loadNodeSecurity, nodeSecurityShape } from './security.ts';

const log = createLogger('pipeline-test');
const PIPE = { pipes: 1, depth: 64, maxReplyBytes: 64 * 1024 };
const servers: ProtocolServer[] = [];
const pools: Pool[] = [];
afterAll(async () => {
  await Promise.all(pools.map((p) => p.close()));
  await Promise.all(servers.map((s) => s.close(100)));
});

/** What the test handler answers for request `n`: `size` bytes that name n. */
const bytesOf = (n: number, size: number): Uint8Array => {
  const b = new Uint8Array(size);
  for (let i = 0; i < size; i++) b[i] = (n * 31 + i) % 251;
  return b;
};

/** Requests seen: the connection each came on, in order. */
const seen: { n: number; conn: string; rid: string | undefined }[] = [];
/** Offsets the handler fails (NOT_FOUND) or answers late (ms). */
const failOn = new Set<number>();
const lateBy = new Map<number, number>();
const silentOn = new Set<number>();

const download: Handler = async (ctx) => {
  const r = decodeDownloadRequest(ctx.body);
  seen.push({ n: r.offset, conn: ctx.conn.id, rid: ctx.requestId });
  if (silentOn.has(r.offset)) await new Promise(() => {});
  const late = lateBy.get(r.offset);
  if (late) await new Promise((res) => setTimeout(res, late));
  if (failOn.has(r.offset)) {
    throw Object.assign(new Error(`no file ${r.offset}`), { errno: Errno.NOT_FOUND });
  }
  await ctx.reply(bytesOf(r.offset, r.size));
};

async function start(security?: ReturnType<typeof loadNodeSecurity>): Promise<number> {
  const s = new ProtocolServer({
    name: 'pipeline',
    hostname: 'h',
    replyCommand: Command.STORAGE_REPLY,
    log,
    security,
    handlers: { [Command.STORAGE_DOWNLOAD]: download },
  });
  servers.push(s);
  return (await s.listen(0)).port;
}

function pool(opts: Partial<ConstructorParameters<typeof Pool>[0]> = {}): Pool {
  const p = new Pool({ transport: nodeTransport, pipeline: PIPE, ...opts });
  pools.push(p);
  return p;
}

const ask = (p: Pool, port: number, n: number, size = 4096, rid?: string) =>
  p.request(
    { host: '127.0.0.1', port },
    Command.STORAGE_DOWNLOAD,
    encodeDownloadRequest({ appId: 'app', userId: 'u', fileId: 'f', offset: n, size }),
    Command.STORAGE_REPLY,
    exactly(size),
    rid,
  );

/** One request, then a pause: the pool opens its pipe beside it. */
async function warm(p: Pool, port: number): Promise<void> {
  await ask(p, port, 0);
  await new Promise((r) => setTimeout(r, 100));
}

let port = 0;
beforeAll(async () => {
  port = await start();
});

/**
 * A raw TCP server for the hostile cases: `onFrame` gets each request frame's command and body
 * (the socket to answer on); closed with every connection after the describe block.
 */
function rawServer(onFrame: (s: Socket, command: number, body: Uint8Array) => void | Promise<void>): {
  port: () => number;
} {
  let server: Server;
  let port = 0;
  const sockets = new Set<Socket>();
  beforeAll(async () => {
    server = createServer((s) => {
      sockets.add(s);
      let buf = Buffer.alloc(0);
      s.on('data', async (d) => {
        buf = Buffer.concat([buf, d]);
        while (buf.length >= HEADER_LENGTH) {
          const len = Number(buf.readBigInt64BE(0));
          if (buf.length < HEADER_LENGTH + len) return;
          const command = buf[8] as number;
          const body = new Uint8Array(buf.subarray(HEADER_LENGTH, HEADER_LENGTH + len));
          buf = buf.subarray(HEADER_LENGTH + len);
          await onFrame(s, command, body);
        }
      });
      s.on('error', () => {});
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as { port: number }).port;
  });
  afterAll(
    () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  );
  return { port: () => port };
}

describe('pipelined requests (Pool.request)', () => {
  it('many at once share one connection and come back in order, byte-exact, each with its request id', async () => {
    const p = pool();
    await warm(p, port);
    seen.length = 0;
    const got = await Promise.all(
      Array.from({ length: 50 }, (_, i) => ask(p, port, i + 1, 1000 + i * 100, `rid-${i + 1}`)),
    );
    got.forEach((b, i) => {
      expect(Buffer.from(b).equals(Buffer.from(bytesOf(i + 1, 1000 + i * 100)))).toBe(true);
    });
    expect(seen.map((s) => s.n)).toEqual(Array.from({ length: 50 }, (_, i) => i + 1));
    expect(new Set(seen.map((s) => s.conn)).size).toBe(1);
    expect(seen.every((s) => s.rid === `rid-${s.n}`)).toBe(true);
  });

  it('an error reply answers its own request; the ones behind it are answered on other connections', async () => {
    const p = pool();
    await warm(p, port);
    seen.length = 0;
    failOn.add(104);
    try {
      const all = await Promise.allSettled(Array.from({ length: 10 }, (_, i) => ask(p, port, 100 + i)));
      all.forEach((r, i) => {
        if (i === 4) {
          expect(r.status).toBe('rejected');
          const e = (r as PromiseRejectedResult).reason;
          expect(e).toBeInstanceOf(RemoteError);
          expect((e as RemoteError).errno).toBe(Errno.NOT_FOUND);
        } else {
          expect(r.status).toBe('fulfilled');
          const b = (r as PromiseFulfilledResult<Uint8Array>).value;
          expect(Buffer.from(b).equals(Buffer.from(bytesOf(100 + i, 4096)))).toBe(true);
        }
      });
      // 100-104 on the pipe; the server closed it after 104's error, so 105-109 came again elsewhere
      const pipeConn = seen.find((s) => s.n === 100)?.conn;
      expect(seen.filter((s) => s.conn === pipeConn).map((s) => s.n)).toEqual([100, 101, 102, 103, 104]);
      expect(seen.filter((s) => s.n >= 105).every((s) => s.conn !== pipeConn)).toBe(true);
    } finally {
      failOn.delete(104);
    }
    // and the next requests find a pipe again
    await warm(p, port);
    seen.length = 0;
    await Promise.all([1, 2, 3].map((n) => ask(p, port, n)));
    expect(new Set(seen.map((s) => s.conn)).size).toBe(1);
  });

  it('a slow request holds back neither the replies before it, nor other connections, nor requests made once it stalled the pipe', async () => {
    const p = pool();
    await warm(p, port);
    lateBy.set(201, 600);
    try {
      const t0 = performance.now();
      const first = ask(p, port, 200).then(() => performance.now() - t0);
      const slow = ask(p, port, 201).then(() => performance.now() - t0);
      const other = pool({ pipeline: undefined });
      const alone = ask(other, port, 202).then(() => performance.now() - t0);
      // asked once the pipe is stalled (PIPE_STALL_MS): not queued behind the slow one
      await new Promise((r) => setTimeout(r, 150));
      seen.length = 0;
      const later = ask(p, port, 203).then(() => performance.now() - t0);
      const [a, b, c, d] = await Promise.all([first, slow, alone, later]);
      expect(a).toBeLessThan(300);
      expect(c).toBeLessThan(300);
      expect(d).toBeLessThan(450);
      expect(b).toBeGreaterThanOrEqual(590);
      const slowConn = seen.find((x) => x.n === 201)?.conn;
      expect(seen.find((x) => x.n === 203)?.conn).not.toBe(slowConn);
    } finally {
      lateBy.delete(201);
    }
  });

  it('a server that stops answering: TIMEOUT after ioTimeoutMs for what was in flight, then a new pipe', async () => {
    const p = pool({ ioTimeoutMs: 400 });
    await warm(p, port);
    silentOn.add(300);
    try {
      const t0 = performance.now();
      const r = await Promise.allSettled([ask(p, port, 300), ask(p, port, 301)]);
      const took = performance.now() - t0;
      for (const x of r) {
        expect(x.status).toBe('rejected');
        expect(((x as PromiseRejectedResult).reason as DsmError).code).toBe('DSM_ERR_TIMEOUT');
      }
      expect(took).toBeGreaterThanOrEqual(390);
      expect(took).toBeLessThan(3000);
    } finally {
      silentOn.delete(300);
    }
    await warm(p, port);
    const b = await ask(p, port, 302);
    expect(Buffer.from(b).equals(Buffer.from(bytesOf(302, 4096)))).toBe(true);
  });

  it('no pipe holds more than `depth` requests: the rest take connections of their own', async () => {
    const p = pool({ pipeline: { pipes: 1, depth: 4, maxReplyBytes: 65536 } });
    await warm(p, port);
    seen.length = 0;
    for (let n = 400; n < 412; n++) lateBy.set(n, 50);
    try {
      const got = await Promise.all(Array.from({ length: 12 }, (_, i) => ask(p, port, 400 + i)));
      got.forEach((b, i) => {
        expect(Buffer.from(b).equals(Buffer.from(bytesOf(400 + i, 4096)))).toBe(true);
      });
    } finally {
      for (let n = 400; n < 412; n++) lateBy.delete(n);
    }
    const perConn = new Map<string, number>();
    for (const s of seen) perConn.set(s.conn, (perConn.get(s.conn) ?? 0) + 1);
    const counts = [...perConn.values()].sort((a, b) => b - a);
    expect(counts[0]).toBe(4); // the pipe
    expect(counts.slice(1).every((c) => c === 1)).toBe(true); // 8 on connections of their own
  });

  it('replies bigger than maxReplyBytes are never pipelined', async () => {
    const p = pool({ pipeline: { pipes: 1, depth: 8, maxReplyBytes: 8192 } });
    await warm(p, port);
    seen.length = 0;
    await Promise.all([ask(p, port, 500, 16384), ask(p, port, 501, 16384)]);
    expect(new Set(seen.map((s) => s.conn)).size).toBe(2);
  });

  it('authenticates a pipe with the cluster key before its first request', async () => {
    const key: ClusterKey = { id: 'k1', secret: new TextEncoder().encode('s'.repeat(40)) };
    const raw = { auth: { required: true, reads: true, keys: [{ id: 'k1', secret: 's'.repeat(40) }] } };
    const sec = loadNodeSecurity({ ...z.object(nodeSecurityShape).parse(raw), configDir: '/' }, '127.0.0.1');
    const authed = await start(sec);
    const p = pool({ auth: key });
    await warm(p, authed);
    seen.length = 0;
    const got = await Promise.all([1, 2, 3, 4].map((n) => ask(p, authed, 600 + n)));
    expect(got.map((b) => b[0])).toEqual([1, 2, 3, 4].map((n) => bytesOf(600 + n, 1)[0]));
    expect(new Set(seen.map((s) => s.conn)).size).toBe(1);
    // without the key the server refuses (the pipe cannot open either), as before
    const bare = pool();
    await expect(ask(bare, authed, 700)).rejects.toMatchObject({ errno: Errno.UNAUTHORIZED });
  });
});

describe('a hostile server on a pipe', () => {
  /** Replies per connection: the first request right, then a frame that claims 1 TiB. */
  const answered = new WeakMap<Socket, number>();
  const liar = rawServer((s) => {
    const n = answered.get(s) ?? 0;
    answered.set(s, n + 1);
    const h = new Uint8Array(HEADER_LENGTH);
    if (n === 0) {
      encodeHeader({ bodyLength: 4096, command: Command.STORAGE_REPLY, status: Status.OK }, h, 0);
      s.write(Buffer.concat([h, Buffer.from(bytesOf(0, 4096))]));
    } else {
      encodeHeader({ bodyLength: 2 ** 40, command: Command.STORAGE_REPLY, status: Status.OK }, h, 0);
      s.write(h);
    }
  });

  it('a reply longer than asked is refused from its header (nothing allocated), and fails that request only', async () => {
    const p = pool();
    await warm(p, liar.port()); // the pool's own connection: its first reply is right
    const before = process.memoryUsage().arrayBuffers;
    const r = await Promise.allSettled([ask(p, liar.port(), 1), ask(p, liar.port(), 2)]);
    // the pipe's first reply is right, its second lies: that request fails (PROTOCOL) and the
    // pipe is dropped
    expect(r.map((x) => x.status)).toEqual(['fulfilled', 'rejected']);
    expect(((r[1] as PromiseRejectedResult).reason as DsmError).code).toBe('DSM_ERR_PROTOCOL');
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(64 * 1024 * 1024);
  });
});

describe('a server that sends bytes nobody asked for after the handshake', () => {
  const key: ClusterKey = { id: 'k1', secret: new TextEncoder().encode('t'.repeat(40)) };
  const nonce = new Uint8Array(AUTH_NONCE_LENGTH).fill(9);
  const stray = rawServer(async (s, command, body) => {
    if (command === Command.AUTH_CHALLENGE) {
      s.write(encodeFrame(Command.STORAGE_REPLY, nonce));
    } else if (command === Command.AUTH_PROVE) {
      const m = decodeAuthProve(body);
      const proof = await hmacSha256(key, authTranscript(AUTH_SERVER_LABEL, nonce, m.clientNonce, m.keyId));
      // the proof, then a frame nobody asked for, in one write
      s.write(
        Buffer.concat([
          encodeFrame(Command.STORAGE_REPLY, proof),
          encodeFrame(Command.STORAGE_REPLY, new Uint8Array(0)),
        ]),
      );
    } else {
      s.write(encodeFrame(Command.STORAGE_REPLY, bytesOf(0, 4096)));
    }
  });

  it('opens no pipe on that connection, and nothing goes unhandled', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (e: unknown) => unhandled.push(e);
    process.on('unhandledRejection', onUnhandled);
    try {
      const p = pool({ auth: key });
      // each of these opens a connection whose handshake ends with the stray frame (the pool's
      // own ones fail their request on it; the pipe's cannot be handed over)
      for (let i = 0; i < 3; i++) {
        const r = await ask(p, stray.port(), i).then(
          () => null,
          (e: unknown) => e,
        );
        if (r !== null) expect(r).toBeInstanceOf(DsmError);
        await new Promise((res) => setTimeout(res, 100));
      }
      expect(unhandled).toEqual([]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });
});
