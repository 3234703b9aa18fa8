import { createServer, type Server } from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import {
  BIG_READ_IDLE_MS,
  BigReads,
  bigReadersNow,
  HIGH_WATER_BYTES,
  MAX_BIG_READERS,
  NodeByteSocket,
  nodeTransport,
  READ_BYTES,
  SLOW_READ_BYTES,
} from './node-transport.ts';

const servers: Server[] = [];
afterAll(() => {
  for (const s of servers) s.close();
});

/** The byte at `pos` of a patterned flood. */
const patternAt = (pos: number) => (pos + (pos >>> 16)) & 0xff;

/**
 * A server that writes `bytes` to each connection as fast as the client takes them: all 7s, or
 * with `patterned` the bytes of patternAt (so a chunk overwritten later shows).
 */
async function flooding(bytes: number, patterned = false): Promise<number> {
  const server = createServer((c) => {
    let left = bytes;
    let pos = 0;
    const nextBlock = () => {
      const b = Buffer.alloc(64 * 1024, 7);
      if (patterned) for (let i = 0; i < b.length; i++) b[i] = patternAt(pos + i);
      pos += b.length;
      return b;
    };
    const pump = () => {
      while (left > 0) {
        const block = nextBlock();
        left -= block.length;
        if (!c.write(block)) {
          c.once('drain', pump);
          return;
        }
      }
      c.end();
    };
    pump();
    c.on('error', () => {});
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return (server.address() as { port: number }).port;
}

describe('NodeByteSocket (the protocol client over a net.Socket)', () => {
  it('holds at most a few chunks for a reader that does not read, then hands every byte out in order', async () => {
    const total = 32 * 1024 * 1024;
    const port = await flooding(total);
    const sock = await nodeTransport.connect('127.0.0.1', port, { timeoutMs: 2000 });
    // the server writes 32 MiB; nothing is read for a while
    await new Promise((r) => setTimeout(r, 300));
    expect(sock).toBeInstanceOf(NodeByteSocket);
    // paused once 64 KiB are queued, after one more read of at most 256 KiB: 320 KiB at most,
    // not the 1 MiB that 16 chunks of 64 KiB held per storage connection of a gateway with slow
    // clients
    const held = (sock as NodeByteSocket).bytesRead;
    expect(held).toBeGreaterThan(0);
    expect(held).toBeLessThan(HIGH_WATER_BYTES + READ_BYTES);
    expect(held).toBeLessThanOrEqual(320 * 1024);
    let got = 0;
    for (let c = await sock.read(); c; c = await sock.read()) {
      for (const b of c) if (b !== 7) throw new Error('wrong byte');
      got += c.length;
    }
    expect(got).toBe(total);
    sock.close();
  });

  it('reads a plain TCP connection up to 256 KiB at a time, and a kept chunk holds at most twice its size', async () => {
    const total = 64 * 1024 * 1024;
    const port = await flooding(total, true);
    const sock = await nodeTransport.connect('127.0.0.1', port, { timeoutMs: 2000 });
    await new Promise((r) => setTimeout(r, 100)); // the kernel's buffer fills
    let got = 0;
    let biggest = 0;
    const kept: { at: number; c: Uint8Array }[] = [];
    const check = (c: Uint8Array, at: number) => {
      for (let i = 0; i < c.length; i++)
        if (c[i] !== patternAt(at + i)) throw new Error(`wrong byte at ${at + i}`);
    };
    for (let c = await sock.read(); c; c = await sock.read()) {
      check(c, got);
      if (kept.length < 64) kept.push({ at: got, c });
      got += c.length;
      biggest = Math.max(biggest, c.length);
      // a small read is copied out (Node's pool serves copies under 4 KiB from 8 KiB slabs)
      expect(c.buffer.byteLength).toBeLessThanOrEqual(Math.max(2 * c.length, 8192));
    }
    expect(got).toBe(total);
    // Node's own reads are 64 KiB at most
    expect(biggest).toBeGreaterThan(64 * 1024);
    expect(biggest).toBeLessThanOrEqual(READ_BYTES);
    // chunks handed out earlier were not overwritten by later reads
    for (const k of kept) check(k.c, k.at);
    sock.close();
  });

  it('reads at most 64 KiB at a time while its reader lags behind', async () => {
    const total = 4 * 1024 * 1024;
    const port = await flooding(total, true);
    const sock = await nodeTransport.connect('127.0.0.1', port, { timeoutMs: 2000 });
    await new Promise((r) => setTimeout(r, 100)); // chunks wait: the reader is behind
    let got = 0;
    const sizes: number[] = [];
    for (let c = await sock.read(); c; c = await sock.read()) {
      for (let i = 0; i < c.length; i++)
        if (c[i] !== patternAt(got + i)) throw new Error(`wrong byte at ${got + i}`);
      got += c.length;
      sizes.push(c.length);
      await new Promise((r) => setTimeout(r, 1)); // slower than the server writes
    }
    expect(got).toBe(total);
    // the first read (before anything waited) may be big; every later one is small
    expect(Math.max(...sizes.slice(1))).toBeLessThanOrEqual(SLOW_READ_BYTES);
    sock.close();
  });

  it('lets at most MAX_BIG_READERS connections read big at once, and gives the places back', async () => {
    const before = bigReadersNow();
    // connections whose every read fills its buffer while their readers keep up
    const readers = Array.from({ length: MAX_BIG_READERS + 3 }, () => new BigReads());
    const sizes = () =>
      readers.map((r) => {
        const b = r.options.buffer();
        r.options.callback(b.length, b);
        return b.length;
      });
    sizes(); // first reads: Node's size
    const second = sizes();
    expect(second.filter((n) => n === READ_BYTES)).toHaveLength(MAX_BIG_READERS);
    expect(second.filter((n) => n === SLOW_READ_BYTES)).toHaveLength(3);
    expect(bigReadersNow()).toBe(before + MAX_BIG_READERS);
    // one lags behind: it gives its place back, and a waiting connection takes it
    const lagging = readers[0] as BigReads;
    lagging.keepingUp = () => false;
    const third = sizes();
    expect(third[0]).toBe(SLOW_READ_BYTES);
    expect(third.filter((n) => n === READ_BYTES)).toHaveLength(MAX_BIG_READERS);
    for (const r of readers) r.release();
    expect(bigReadersNow()).toBe(before);

    // a real connection closed in the middle of a big stream gives its place back
    const port = await flooding(64 * 1024 * 1024);
    const sock = await nodeTransport.connect('127.0.0.1', port, { timeoutMs: 2000 });
    while (bigReadersNow() === before) {
      const c = await sock.read();
      if (!c) throw new Error('the stream ended before it read big');
    }
    expect(bigReadersNow()).toBe(before + 1);
    sock.destroy();
    const until = Date.now() + 3000;
    while (bigReadersNow() > before && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
    expect(bigReadersNow()).toBe(before);
  });

  it('hands the place of a connection that stopped reading to one that wants it', async () => {
    // the earlier tests' connections gave their places back when they closed
    const until = Date.now() + 3000;
    while (bigReadersNow() > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
    const before = bigReadersNow();
    expect(before).toBe(0);
    const full = (r: BigReads) => {
      const b = r.options.buffer();
      r.options.callback(b.length, b);
      return b.length;
    };
    // the holders' last reads filled their buffers, then their replies ended (pooled, idle)
    const holders = Array.from({ length: MAX_BIG_READERS - before }, () => new BigReads());
    for (const h of holders) full(h);
    for (const h of holders) expect(full(h)).toBe(READ_BYTES);
    const late = new BigReads();
    full(late);
    expect(full(late)).toBe(SLOW_READ_BYTES); // no place: the holders read just now
    await new Promise((r) => setTimeout(r, BIG_READ_IDLE_MS + 20));
    expect(full(late)).toBe(READ_BYTES); // an idle holder's place
    expect(bigReadersNow()).toBe(MAX_BIG_READERS);
    for (const r of [...holders, late]) r.release();
    expect(bigReadersNow()).toBe(before);
  });

  it("shares one buffer for small reads, and a chunk kept from it is not changed by another connection's reads", async () => {
    const a = new BigReads();
    const b = new BigReads();
    expect(a.options.buffer()).toBe(b.options.buffer()); // pooled connections hold none of their own
    const total = 2 * 1024 * 1024;
    const port = await flooding(total, true);
    const socks = await Promise.all(
      [0, 1].map(() => nodeTransport.connect('127.0.0.1', port, { timeoutMs: 2000 })),
    );
    await new Promise((r) => setTimeout(r, 100)); // both lag: their reads are small, into the one buffer
    const kept = await Promise.all(
      socks.map(async (sock) => {
        const chunks: { at: number; c: Uint8Array }[] = [];
        let got = 0;
        for (let c = await sock.read(); c; c = await sock.read()) {
          chunks.push({ at: got, c });
          got += c.length;
          await new Promise((r) => setTimeout(r, 1));
        }
        expect(got).toBe(total);
        sock.close();
        return chunks;
      }),
    );
    for (const chunks of kept)
      for (const { at, c } of chunks)
        for (let i = 0; i < c.length; i++)
          if (c[i] !== patternAt(at + i)) throw new Error(`byte ${at + i} changed`);
  });
});
