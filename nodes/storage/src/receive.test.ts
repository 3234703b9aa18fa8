import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { MemoryTempFile } from './file-ops.ts';
import { receiveInto } from './fs-util.ts';

const MiB = 1024 * 1024;
const root = mkdtempSync(join(tmpdir(), 'dsm-receive-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** `count` chunks of `size` bytes, each filled with its index (mod 251); `gapMs` before each after the first. */
async function* chunks(count: number, size: number, gapMs = 0): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < count; i++) {
    if (i > 0 && gapMs > 0) await sleep(gapMs);
    yield new Uint8Array(size).fill(i % 251);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('receiveInto: early flushes of a big upload', () => {
  it('starts an fdatasync every syncEvery bytes, one at a time, and waits for the last', async () => {
    const path = join(root, 'big');
    const fh = await open(path, 'wx');
    const syncs: number[] = []; // bytes written when each flush started
    let written = 0;
    let inFlight = 0;
    let maxInFlight = 0;
    let settled = 0;
    try {
      const got = await receiveInto(
        {
          writev: async (b, p) => {
            const r = await fh.writev(b, p);
            written += r.bytesWritten;
            return r;
          },
          // a real fdatasync of the real file, made slow so that receiving goes on meanwhile
          datasync: async () => {
            syncs.push(written);
            inFlight++;
            maxInFlight = Math.max(maxInFlight, inFlight);
            try {
              await sleep(20);
              await fh.datasync();
            } finally {
              inFlight--;
              settled++;
            }
          },
        },
        // a body that arrives over some 400 ms (as from a network), longer than a flush takes
        // even on a busy disk: from memory, 40 MiB was written before the first flush ended
        chunks(40, MiB, 10),
        MiB,
        0,
        { syncEvery: 8 * MiB },
      );
      expect(got.bytes).toBe(40 * MiB);
      // a flush per 8 MiB of a 40 MiB body at most (the last one may start at 40 MiB, before
      // the final batch's write), fewer when a slow one was still running at the next 8 MiB
      expect(syncs.length).toBeGreaterThanOrEqual(2);
      expect(syncs.length).toBeLessThanOrEqual(5);
      for (const [i, at] of syncs.entries()) expect(at - (syncs[i - 1] ?? 0)).toBeGreaterThanOrEqual(8 * MiB);
      expect(maxInFlight).toBe(1);
      expect(settled).toBe(syncs.length); // none left running when the receive returned
    } finally {
      await fh.close();
    }
    const data = readFileSync(path);
    expect(data.length).toBe(40 * MiB);
    for (let i = 0; i < 40; i++) expect(data[i * MiB + 12345]).toBe(i % 251);
    const want = createHash('sha256');
    for await (const c of chunks(40, MiB)) want.update(c);
    expect(readFileSync(path).equals(data)).toBe(true);
    expect(createHash('sha256').update(data).digest().equals(want.digest())).toBe(true);
  });

  it('fails the receive when an early flush fails, keeping what was written', async () => {
    const path = join(root, 'failing');
    const fh = await open(path, 'wx');
    try {
      const fail = Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' });
      await expect(
        receiveInto(
          { writev: (b, p) => fh.writev(b, p), datasync: () => Promise.reject(fail) },
          chunks(24, MiB),
          MiB,
          0,
          { syncEvery: 4 * MiB },
        ),
      ).rejects.toBe(fail);
    } finally {
      await fh.close();
    }
    // written up to the failure, not beyond a couple of batches after it
    const size = readFileSync(path).length;
    expect(size).toBeGreaterThanOrEqual(4 * MiB);
    expect(size).toBeLessThan(24 * MiB);
  });

  it('never flushes early without syncEvery, nor for a body smaller than it', async () => {
    for (const opts of [{}, { syncEvery: 64 * MiB }]) {
      const path = join(root, `small-${Object.keys(opts).length}`);
      const fh = await open(path, 'wx');
      let syncs = 0;
      try {
        const got = await receiveInto(
          {
            writev: (b, p) => fh.writev(b, p),
            datasync: async () => {
              syncs++;
            },
          },
          chunks(20, MiB),
          MiB,
          0,
          opts,
        );
        expect(got.bytes).toBe(20 * MiB);
      } finally {
        await fh.close();
      }
      expect(syncs).toBe(0);
    }
  });
});

describe('MemoryTempFile (a small upload received in memory)', () => {
  it('takes batches written without a position one after the other, and refuses more than declared', async () => {
    const body = Buffer.from(Array.from({ length: 10_000 }, (_, i) => (i * 7) & 255));
    const mem = MemoryTempFile.open(body.length, '/nonexistent', '/nonexistent', false);
    // 4 KiB batches (the smallest ioChunkBytes): three writes at the file's own position
    async function* pieces() {
      for (let i = 0; i < body.length; i += 1000) yield body.subarray(i, i + 1000);
    }
    const got = await receiveInto(mem, pieces(), 4096, null);
    expect(got.bytes).toBe(body.length);
    expect(mem.data.equals(body)).toBe(true);
    const small = MemoryTempFile.open(10, '/nonexistent', '/nonexistent', false);
    await expect(receiveInto(small, pieces(), 4096, null)).rejects.toThrow(/more than the 10 bytes declared/);
  });
});

describe('receiveInto: the checksum', () => {
  it("is the body's SHA-256, or none at all when the caller asks for none (a resumable append)", async () => {
    const body = Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 13) & 255));
    async function* pieces() {
      for (let i = 0; i < body.length; i += 65_536) yield body.subarray(i, i + 65_536);
    }
    const want = createHash('sha256').update(body).digest();
    for (const hash of [undefined, false] as const) {
      const path = join(root, `sum-${hash}`);
      const fh = await open(path, 'wx');
      try {
        const got = await receiveInto(fh, pieces(), 128 * 1024, 0, hash === false ? { hash } : {});
        expect(got.bytes).toBe(body.length);
        if (hash === false) expect(got.sha256).toBeNull();
        else expect(got.sha256?.equals(want)).toBe(true);
        expect(got.head.length).toBeGreaterThan(0);
      } finally {
        await fh.close();
      }
      expect(readFileSync(path).equals(body)).toBe(true);
    }
  });
});

describe('receiveInto: the socket buffers of a big body do not wait for the young generation to fill', () => {
  it('collects the young generation every 4 MiB received (at least four batches apart)', async () => {
    const { PerformanceObserver, constants } = await import('node:perf_hooks');
    const minor: number[] = [];
    const obs = new PerformanceObserver((list) => {
      for (const e of list.getEntries()) {
        const detail = (e as { detail?: { kind?: number } }).detail;
        if (detail?.kind === constants.NODE_PERFORMANCE_GC_MINOR) minor.push(e.startTime);
      }
    });
    obs.observe({ entryTypes: ['gc'] });
    // one reused chunk: the source itself fills no young generation
    const chunk = new Uint8Array(64 * 1024).fill(7);
    async function* same(count: number): AsyncGenerator<Uint8Array> {
      for (let i = 0; i < count; i++) yield chunk;
    }
    const count = async (bytes: number, batch: number) => {
      minor.length = 0;
      const sink: Parameters<typeof receiveInto>[0] = {
        // nothing written: the test is about what receiving leaves behind
        writev: async (b) => ({ bytesWritten: b.reduce((n, x) => n + x.byteLength, 0), buffers: b }),
        datasync: async () => {},
      };
      await receiveInto(sink, same(bytes / chunk.length), batch, null, { hash: false });
      await sleep(50); // gc entries are delivered asynchronously
      return minor.length;
    };
    try {
      expect(await count(64 * MiB, 512 * 1024)).toBeGreaterThanOrEqual(16);
      // batches of 4 MiB: one collection per 16 MiB at most, so that a batch in flight is not
      // promoted to the old generation
      const big = await count(64 * MiB, 4 * MiB);
      expect(big).toBeGreaterThanOrEqual(4);
      expect(big).toBeLessThan(16);
    } finally {
      obs.disconnect();
    }
  });
});
