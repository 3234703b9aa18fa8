import { connect } from 'node:net';
import { Connection, Pool, RemoteError } from '@dsm/client';
import { nodeTransport } from '@dsm/client/node';
import { createLogger } from '@dsm/common';
import {
  Command,
  decodeErrorReply,
  decodeHeader,
  Errno,
  encodeFrame,
  encodeHeader,
  exactly,
  HEADER_LENGTH,
} from '@dsm/packets';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Handler, ProtocolServer } from './protocol-server.ts';

const log = createLogger('test');
const REUSED_CHUNKS = 4096; // 16 MiB: more than loopback's socket buffers hold
let server: ProtocolServer;
let port = 0;

/** An upload handler: counts the body's bytes (once `first` settled) and replies with the count. */
const countBody =
  (first?: Promise<void>): Handler =>
  async (ctx) => {
    await first;
    let n = 0;
    for await (const c of ctx.stream) n += c.length;
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigInt64(0, BigInt(n));
    await ctx.reply(b);
  };

const testServer = (name: string, maxUpload: number, handlers: Record<number, Handler>) =>
  new ProtocolServer({
    name,
    hostname: 'testhost',
    replyCommand: Command.STORAGE_REPLY,
    log,
    maxUpload,
    handlers,
  });

beforeAll(async () => {
  server = testServer('test', 1 << 20, {
    [Command.PING]: async (ctx) => ctx.reply(),
    // upload: echo back the byte count as 8 bytes
    [Command.STORAGE_UPLOAD]: countBody(),
    [Command.STORAGE_SIZE]: async () => {
      throw Object.assign(new Error('Read Database Fail'), { errno: Errno.NOT_FOUND });
    },
    [Command.STORAGE_DOWNLOAD]: async (ctx) => {
      async function* gen() {
        for (let i = 0; i < 10; i++) yield new Uint8Array(1000).fill(i);
      }
      await ctx.replyStream(10_000, gen());
    },
    // a large reply from two reused 4 KiB buffers, as the storage's downloads read files
    [Command.TRACKER_GROUPS]: async (ctx) => {
      const bufs = [new Uint8Array(4096), new Uint8Array(4096)];
      async function* gen() {
        for (let i = 0; i < REUSED_CHUNKS; i++) yield (bufs[i % 2] as Uint8Array).fill(i % 251);
      }
      await ctx.replyStream(REUSED_CHUNKS * 4096, gen());
    },
  });
  port = (await server.listen(0)).port;
});
afterAll(() => server.close());

function raw(frame: Uint8Array): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    s.on('data', (c) => chunks.push(c));
    s.on('close', () => resolve(new Uint8Array(Buffer.concat(chunks))));
    s.on('error', reject);
    s.write(frame);
  });
}

describe('protocol server', () => {
  it('hands each reply chunk to the OS before asking for the next (a source may reuse buffers)', async () => {
    const body = REUSED_CHUNKS * 4096;
    const got = await new Promise<Buffer>((resolve, reject) => {
      const s = connect(port, '127.0.0.1');
      const chunks: Buffer[] = [];
      let n = 0;
      s.on('error', reject);
      s.on('close', () => reject(new Error(`closed after ${n} bytes`)));
      s.write(encodeFrame(Command.TRACKER_GROUPS, new Uint8Array(0)));
      s.pause(); // a slow reader: the kernel buffers fill and writes queue in the server
      setTimeout(() => {
        s.on('data', (c: Buffer) => {
          chunks.push(c);
          n += c.length;
          if (n >= HEADER_LENGTH + body) {
            s.destroy();
            resolve(Buffer.concat(chunks));
          }
        });
        s.resume();
      }, 300);
    });
    expect(decodeHeader(got.subarray(0, HEADER_LENGTH)).bodyLength).toBe(body);
    for (let i = 0; i < REUSED_CHUNKS; i++) {
      const at = HEADER_LENGTH + i * 4096;
      const c = got.subarray(at, at + 4096);
      if (c[0] !== i % 251 || c[4095] !== i % 251) throw new Error(`chunk ${i} holds another chunk's bytes`);
    }
  });

  it('answers an unknown command with the seed error text and closes only that connection', async () => {
    const reply = await raw(encodeFrame(99));
    const h = decodeHeader(reply);
    expect(h).toEqual({ bodyLength: reply.length - HEADER_LENGTH, command: 102, status: 0xfd });
    expect(decodeErrorReply(reply.subarray(HEADER_LENGTH)).message).toBe('[testhost] Unknown Command: 99');
    const pool = new Pool({ transport: nodeTransport });
    await pool.use({ host: '127.0.0.1', port }, (c) =>
      c.request(Command.PING, new Uint8Array(0), 102, exactly(0)),
    );
    await pool.close();
  });

  it('refuses an oversized upload from its header alone', async () => {
    const h = encodeHeader({ bodyLength: 2 ** 40, command: Command.STORAGE_UPLOAD, status: 0 });
    const reply = await raw(h);
    expect(decodeErrorReply(reply.subarray(HEADER_LENGTH)).errno).toBe(Errno.TOO_LARGE);
  });

  it('answers requests whose bytes come in pieces with pauses between (a proxy forwarding a header alone)', async () => {
    const s = connect(port, '127.0.0.1');
    const got: Buffer[] = [];
    let closed = false;
    s.on('data', (c: Buffer) => got.push(c));
    s.on('close', () => {
      closed = true;
    });
    await new Promise<void>((r) => s.once('connect', () => r()));
    const pause = () => new Promise((r) => setTimeout(r, 30));
    const received = async (n: number) => {
      for (let i = 0; i < 100 && Buffer.concat(got).length < n && !closed; i++) await pause();
      return Buffer.concat(got);
    };
    // a PING: 4 bytes of its header, a pause, the other 6
    const ping = encodeFrame(Command.PING);
    s.write(ping.subarray(0, 4));
    await pause();
    s.write(ping.subarray(4));
    let r = await received(HEADER_LENGTH);
    expect(closed).toBe(false);
    expect(decodeHeader(r)).toEqual({ bodyLength: 0, command: Command.STORAGE_REPLY, status: 0 });
    // an upload: its header alone, then the prefix and the body in pieces, a pause before each
    const body = new Uint8Array(408 + 20_000);
    const upload = new Uint8Array(HEADER_LENGTH + body.length);
    encodeHeader({ bodyLength: body.length, command: Command.STORAGE_UPLOAD, status: 0 }, upload, 0);
    upload.set(body, HEADER_LENGTH);
    for (const [from, to] of [
      [0, HEADER_LENGTH],
      [HEADER_LENGTH, HEADER_LENGTH + 100],
      [HEADER_LENGTH + 100, HEADER_LENGTH + 5000],
      [HEADER_LENGTH + 5000, upload.length],
    ] as const) {
      s.write(upload.subarray(from, to));
      await pause();
    }
    r = await received(2 * HEADER_LENGTH + 8);
    expect(closed).toBe(false);
    const reply = r.subarray(HEADER_LENGTH);
    expect(decodeHeader(reply)).toEqual({ bodyLength: 8, command: Command.STORAGE_REPLY, status: 0 });
    expect(Number(new DataView(reply.buffer, reply.byteOffset + HEADER_LENGTH).getBigInt64(0))).toBe(20_000);
    s.destroy();
  });

  it('streams request and reply bodies and keeps the connection for the next request', async () => {
    const sock = await nodeTransport.connect('127.0.0.1', port, { timeoutMs: 1000 });
    const c = new Connection(sock, 'x', { ioTimeoutMs: 2000 });
    async function* src() {
      for (let i = 0; i < 5; i++) yield new Uint8Array(7000);
    }
    const r = await c.requestStreamed(
      Command.STORAGE_UPLOAD,
      new Uint8Array(408).fill(0),
      35_000,
      src(),
      102,
      exactly(8),
    );
    expect(Number(new DataView(r.buffer, r.byteOffset).getBigInt64(0))).toBe(35_000);
    const d = await c.requestStream(Command.STORAGE_DOWNLOAD, new Uint8Array(416), 102);
    let n = 0;
    for await (const chunk of d.stream) n += chunk.length;
    expect(n).toBe(10_000);
    expect(c.usable).toBe(true);
    await c.request(Command.PING, new Uint8Array(0), 102, exactly(0));
    const err = await c.request(Command.STORAGE_SIZE, new Uint8Array(400), 102, exactly(8)).catch((e) => e);
    expect(err).toBeInstanceOf(RemoteError);
    expect(err.errno).toBe(Errno.NOT_FOUND);
    expect(c.usable).toBe(false);
    c.close();
  });

  it('sends a small upload in one write (header and body together), a big one header first', async () => {
    const sock = await nodeTransport.connect('127.0.0.1', port, { timeoutMs: 1000 });
    const writes: number[] = [];
    const write = sock.write.bind(sock);
    sock.write = (b) => {
      writes.push(b.length);
      return write(b);
    };
    const c = new Connection(sock, 'x', { ioTimeoutMs: 2000 });
    const upload = async (chunks: number[]) => {
      writes.length = 0;
      async function* src() {
        for (const n of chunks) yield new Uint8Array(n).fill(7);
      }
      const total = chunks.reduce((a, b) => a + b, 0);
      const r = await c.requestStreamed(
        Command.STORAGE_UPLOAD,
        new Uint8Array(408),
        total,
        src(),
        102,
        exactly(8),
      );
      expect(Number(new DataView(r.buffer, r.byteOffset).getBigInt64(0))).toBe(total);
      return [...writes];
    };
    expect(await upload([4096])).toEqual([HEADER_LENGTH + 408 + 4096]);
    expect(await upload([])).toEqual([HEADER_LENGTH + 408]);
    expect(await upload([1000, 2000])).toEqual([HEADER_LENGTH + 408 + 1000, 2000]);
    // more than 64 KiB in all: the header goes before the body's first chunk is asked for
    expect(await upload([40_000, 40_000])).toEqual([HEADER_LENGTH + 408, 40_000, 40_000]);
    expect(c.usable).toBe(true);
    c.close();
  });
});

describe('request log', () => {
  it('writes one debug line per request (command, errno, ms) and none above debug', async () => {
    const { pino } = await import('pino');
    const lines: Record<string, unknown>[] = [];
    const sink = { write: (s: string) => lines.push(JSON.parse(s)) };
    for (const level of ['debug', 'info'] as const) {
      lines.length = 0;
      const s = new ProtocolServer({
        name: 'logged',
        hostname: 'h',
        replyCommand: Command.STORAGE_REPLY,
        log: pino({ level }, sink),
        handlers: { [Command.PING]: async (ctx) => ctx.reply() },
      });
      const { port: p } = await s.listen(0);
      const pool = new Pool({ transport: nodeTransport });
      try {
        await pool.use({ host: '127.0.0.1', port: p }, (c) =>
          c.request(Command.PING, new Uint8Array(0), Command.STORAGE_REPLY, exactly(0)),
        );
      } finally {
        await pool.close();
        await s.close();
      }
      const requests = lines.filter((l) => l.msg === 'request');
      if (level === 'debug') {
        expect(requests).toHaveLength(1);
        expect(requests[0]).toMatchObject({ command: Command.PING, errno: 0 });
        expect(requests[0]?.ms).toBeTypeOf('number');
      } else expect(requests).toEqual([]);
    }
  });
});

describe('request context (REQUEST_CONTEXT, 4)', () => {
  const ids: (string | undefined)[] = [];
  const lines: Record<string, unknown>[] = [];
  let s: ProtocolServer;
  let p = 0;
  beforeAll(async () => {
    const { pino } = await import('pino');
    s = new ProtocolServer({
      name: 'ctx',
      hostname: 'h',
      replyCommand: Command.STORAGE_REPLY,
      log: pino({ level: 'debug' }, { write: (l: string) => lines.push(JSON.parse(l)) }),
      handlers: {
        [Command.PING]: async (ctx) => {
          ids.push(ctx.requestId);
          ctx.log.info('handler line');
          await ctx.reply();
        },
      },
    });
    p = (await s.listen(0)).port;
  });
  afterAll(() => s.close());

  it('names the next request only, in its log lines (`rid`), with no reply of its own', async () => {
    ids.length = 0;
    lines.length = 0;
    const pool = new Pool({ transport: nodeTransport });
    const ping = (c: Connection) =>
      c.request(Command.PING, new Uint8Array(0), Command.STORAGE_REPLY, exactly(0));
    try {
      const addr = { host: '127.0.0.1', port: p };
      await pool.use(addr, ping, false, 'req-ctx-1');
      // the same pooled connection, no id: the server does not carry the last one over
      await pool.use(addr, ping);
      await pool.use(addr, ping, false, 'req-ctx-2');
    } finally {
      await pool.close();
    }
    expect(ids).toEqual(['req-ctx-1', undefined, 'req-ctx-2']);
    const req = lines.filter((l) => l.msg === 'request');
    expect(req.map((l) => l.rid)).toEqual(['req-ctx-1', undefined, 'req-ctx-2']);
    expect(lines.filter((l) => l.msg === 'handler line').map((l) => l.rid)).toEqual([
      'req-ctx-1',
      undefined,
      'req-ctx-2',
    ]);
    // one connection served all three (the context frame left the stream in step)
    expect(new Set(req.map((l) => l.conn)).size).toBe(1);
  });

  it('a client never sends what is not a request id (the request goes out unnamed)', async () => {
    ids.length = 0;
    const pool = new Pool({ transport: nodeTransport });
    try {
      await pool.use(
        { host: '127.0.0.1', port: p },
        (c) => c.request(Command.PING, new Uint8Array(0), Command.STORAGE_REPLY, exactly(0)),
        false,
        'bad id with spaces',
      );
    } finally {
      await pool.close();
    }
    expect(ids).toEqual([undefined]);
  });

  it('refuses a malformed or oversized context frame: error reply, that connection closed', async () => {
    const ping = encodeFrame(Command.PING, new Uint8Array(0));
    const send = (frame: Uint8Array) =>
      new Promise<Uint8Array>((resolve, reject) => {
        const sock = connect(p, '127.0.0.1');
        const chunks: Buffer[] = [];
        sock.on('data', (c) => chunks.push(c));
        sock.on('close', () => resolve(new Uint8Array(Buffer.concat(chunks))));
        sock.on('error', reject);
        // half-close after the bytes: a server that serves them all ends the connection too
        sock.end(Buffer.concat([frame, ping]));
      });
    ids.length = 0;
    const bad = await send(encodeFrame(Command.REQUEST_CONTEXT, new TextEncoder().encode('a b')));
    expect(decodeHeader(bad).status).toBe(0xfd);
    expect(decodeErrorReply(bad.subarray(HEADER_LENGTH))).toMatchObject({
      errno: Errno.BAD_FIELD,
      message: '[h] Invalid Request Id',
    });
    // refused from the header (65 > 64 bytes), before the body is read
    const big = await send(encodeHeader({ bodyLength: 65, command: Command.REQUEST_CONTEXT, status: 0 }));
    expect(decodeErrorReply(big.subarray(HEADER_LENGTH))).toMatchObject({ errno: Errno.BAD_LENGTH });
    const empty = await send(encodeFrame(Command.REQUEST_CONTEXT, new Uint8Array(0)));
    expect(decodeErrorReply(empty.subarray(HEADER_LENGTH))).toMatchObject({ errno: Errno.BAD_LENGTH });
    // the PING behind each bad frame was never served, and the server still serves others
    expect(ids).toEqual([]);
    const ok = await send(encodeFrame(Command.REQUEST_CONTEXT, new TextEncoder().encode('fine.id_1-2')));
    expect(decodeHeader(ok)).toMatchObject({ command: Command.STORAGE_REPLY, status: 0, bodyLength: 0 });
    expect(ids).toEqual(['fine.id_1-2']);
  });
});

describe('a sender that outruns its handler', () => {
  const MiB = 1 << 20;
  const SENT = 64 * MiB;
  const PREFIX = 408; // the upload frame's fixed prefix (ids, size), before the streamed body
  let slow: ProtocolServer;
  let slowPort = 0;
  let release: () => void = () => {};
  const released = new Promise<void>((r) => {
    release = r;
  });

  beforeAll(async () => {
    slow = testServer('slow', 2 * SENT, {
      [Command.PING]: async (ctx) => ctx.reply(),
      // reads nothing until the test lets it, then counts the body
      [Command.STORAGE_UPLOAD]: countBody(released),
    });
    slowPort = (await slow.listen(0)).port;
  });
  afterAll(() => {
    release();
    return slow.close();
  });

  it('is held back by the socket (a few chunks wait in the server), and loses nothing', async () => {
    const s = connect(slowPort, '127.0.0.1');
    const got: Buffer[] = [];
    s.on('data', (c: Buffer) => got.push(c));
    s.on('error', () => {});
    await new Promise<void>((r) => s.once('connect', () => r()));
    const head = new Uint8Array(HEADER_LENGTH + PREFIX);
    encodeHeader({ bodyLength: PREFIX + SENT, command: Command.STORAGE_UPLOAD, status: 0 }, head, 0);
    s.write(head);
    const chunk = new Uint8Array(MiB).fill(7);
    for (let i = 0; i < SENT / MiB; i++) s.write(chunk); // queued in this process, taken as the peer reads
    // the bytes the kernel took from this process, once they stop growing
    const handed = () => s.bytesWritten - s.writableLength;
    let last = -1;
    for (let i = 0; i < 40 && handed() !== last; i++) {
      last = handed();
      await new Promise((r) => setTimeout(r, 150));
    }
    // the socket buffers of loopback and 4 waiting chunks in the server: far from all 64 MiB
    expect(handed()).toBeLessThan(SENT / 2);
    expect(s.writableLength).toBeGreaterThan(SENT / 2);
    // another connection is served meanwhile
    const sock = await nodeTransport.connect('127.0.0.1', slowPort, { timeoutMs: 2000 });
    const other = new Connection(sock, 'other', { ioTimeoutMs: 2000 });
    try {
      expect(
        await other.request(Command.PING, new Uint8Array(0), Command.STORAGE_REPLY, exactly(0)),
      ).toHaveLength(0);
    } finally {
      other.close();
    }
    // let the handler read: every byte arrives, and the reply counts them
    release();
    for (let i = 0; i < 200 && Buffer.concat(got).length < HEADER_LENGTH + 8; i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    const reply = Buffer.concat(got);
    expect(decodeHeader(reply)).toEqual({ bodyLength: 8, command: Command.STORAGE_REPLY, status: 0 });
    expect(Number(reply.readBigInt64BE(HEADER_LENGTH))).toBe(SENT);
    s.destroy();
  });
});
