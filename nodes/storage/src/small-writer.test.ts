import {
  existsSync,
  linkSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger } from '@dsm/common';
import { afterAll, describe, expect, it } from 'vitest';
import { SmallFileWriter } from './small-writer.ts';

const root = mkdtempSync(join(tmpdir(), 'dsm-small-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const log = createLogger('small-writer-test');

let n = 0;
/** A fresh temp folder and final folder. */
function place(): { tmpDir: string; finalDir: string } {
  n++;
  const tmpDir = join(root, `tmp${n}`);
  const finalDir = join(root, `final${n}`);
  mkdirSync(tmpDir);
  mkdirSync(finalDir);
  return { tmpDir, finalDir };
}

/** Runs `fn` with a new writer, closed after; returns the writer. */
async function withWriter(
  fn: (w: SmallFileWriter) => Promise<void>,
  opts: { source?: string } = {},
): Promise<SmallFileWriter> {
  const w = new SmallFileWriter(log, opts);
  try {
    await fn(w);
  } finally {
    await w.close();
  }
  return w;
}

const bytes = (len: number, seed: number) =>
  Buffer.from(Array.from({ length: len }, (_, i) => (i * 31 + seed) & 255));

describe('SmallFileWriter (a small upload’s file steps on a worker thread)', () => {
  it('creates, writes and links each file, the jobs of one turn together, with the same bytes at both names', async () => {
    await withWriter(async (w) => {
      const { tmpDir, finalDir } = place();
      const jobs = Array.from({ length: 20 }, (_, i) => ({
        tmp: join(tmpDir, `t${i}`),
        tmpDir,
        data: bytes(i === 0 ? 0 : 4096 + i, i),
        finalPath: join(finalDir, `f${i}`),
      }));
      const expected = jobs.map((j) => Buffer.from(j.data));
      const results = await Promise.all(jobs.map((j) => w.write(j)));
      expect(results).toEqual(jobs.map(() => ({})));
      for (const [i, j] of jobs.entries()) {
        expect(readFileSync(j.finalPath)).toEqual(expected[i]);
        // one inode, two names: the temp name is the upload's journal until its row is committed
        expect(statSync(j.tmp).ino).toBe(statSync(j.finalPath).ino);
        expect(statSync(j.finalPath).nlink).toBe(2);
      }
      // journal names go through the worker too; a missing one is fine
      await Promise.all(jobs.map((j) => w.remove(j.tmp)));
      await w.remove(join(tmpDir, 'never-there'));
      expect(readdirSync(tmpDir)).toEqual([]);
      expect(readdirSync(finalDir)).toHaveLength(20);
      expect(w.pending).toBe(0);
    });
  });

  it('creates its temp folder again when it was removed, and writes into a temp file the caller created', async () => {
    await withWriter(async (w) => {
      const { tmpDir, finalDir } = place();
      rmSync(tmpDir, { recursive: true });
      await w.write({ tmp: join(tmpDir, 'a'), tmpDir, data: bytes(100, 1), finalPath: join(finalDir, 'a') });
      expect(readFileSync(join(finalDir, 'a'))).toEqual(bytes(100, 1));

      // a link claim hard-links the (empty) temp file before the body arrives
      const tmp = join(tmpDir, 'b');
      writeFileSync(tmp, '', { flag: 'wx' });
      const claim = join(root, `claim${n}`);
      linkSync(tmp, claim);
      await w.write({ tmp, tmpDir, exists: true, data: bytes(5000, 2), finalPath: join(finalDir, 'b') });
      expect(readFileSync(join(finalDir, 'b'))).toEqual(bytes(5000, 2));
      expect(statSync(claim).ino).toBe(statSync(join(finalDir, 'b')).ino);
    });
  });

  it('reports a failed link (the caller decides) and keeps the complete temp file', async () => {
    await withWriter(async (w) => {
      const { tmpDir, finalDir } = place();
      writeFileSync(join(finalDir, 'taken'), 'someone else');
      const taken = await w.write({
        tmp: join(tmpDir, 'x'),
        tmpDir,
        data: bytes(64, 3),
        finalPath: join(finalDir, 'taken'),
      });
      expect(taken.linkError).toMatchObject({ code: 'EEXIST', syscall: 'link' });
      expect(readFileSync(join(finalDir, 'taken'), 'utf8')).toBe('someone else');
      expect(readFileSync(join(tmpDir, 'x'))).toEqual(bytes(64, 3));

      const gone = await w.write({
        tmp: join(tmpDir, 'y'),
        tmpDir,
        data: bytes(64, 4),
        finalPath: join(finalDir, 'no-such-folder', 'y'),
      });
      expect(gone.linkError).toMatchObject({ code: 'ENOENT', syscall: 'link' });
      expect(readFileSync(join(tmpDir, 'y'))).toEqual(bytes(64, 4));
    });
  });

  it('a failed step rejects with its system error and leaves no temp file; a name it did not create is left alone', async () => {
    await withWriter(async (w) => {
      const { tmpDir, finalDir } = place();
      // the temp name exists: not this upload's file, so it is neither written nor removed
      writeFileSync(join(tmpDir, 'exists'), 'other');
      await expect(
        w.write({ tmp: join(tmpDir, 'exists'), tmpDir, data: bytes(10, 5), finalPath: join(finalDir, 'e') }),
      ).rejects.toMatchObject({ code: 'EEXIST', syscall: 'open' });
      expect(readFileSync(join(tmpDir, 'exists'), 'utf8')).toBe('other');
      // the write fails (ENOSPC: the name leads to /dev/full), and the file the caller created goes
      const tmp = join(tmpDir, 'full');
      symlinkSync('/dev/full', tmp);
      await expect(
        w.write({ tmp, tmpDir, exists: true, data: bytes(10, 6), finalPath: join(finalDir, 'full') }),
      ).rejects.toMatchObject({ code: 'ENOSPC', syscall: 'write' });
      expect(existsSync(tmp)).toBe(false);
      expect(existsSync(join(finalDir, 'full'))).toBe(false);
      expect(w.pending).toBe(0);
    });
  });

  it('a worker that dies fails its jobs at once with an I/O error, and the next job gets a new worker', async () => {
    const { tmpDir, finalDir } = place();
    const job = (name: string) => ({
      tmp: join(tmpDir, name),
      tmpDir,
      data: bytes(10, 7),
      finalPath: join(finalDir, name),
    });
    // a worker that exits on its first message
    const source = "require('node:worker_threads').parentPort.on('message', () => process.exit(3));";
    const w = await withWriter(
      async (w) => {
        const t0 = Date.now();
        const both = await Promise.allSettled([w.write(job('a')), w.write(job('b'))]);
        expect(both.map((r) => r.status)).toEqual(['rejected', 'rejected']);
        expect((both[0] as PromiseRejectedResult).reason).toMatchObject({ code: 'EIO' });
        expect(Date.now() - t0).toBeLessThan(5000);
        expect(w.pending).toBe(0);
        await expect(w.write(job('c'))).rejects.toMatchObject({ code: 'EIO' });
      },
      { source },
    );
    await expect(w.write(job('d'))).rejects.toMatchObject({ code: 'ECANCELED' });
  });
});
