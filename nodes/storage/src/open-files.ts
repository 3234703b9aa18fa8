import { lstatSync } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';

/**
 * Files a storage has open for reading, kept for the next read of the same file: a small
 * download was five file system calls through the thread pool (open, the /proc check that the
 * file is inside the stores, fstat, read, close) and most of the storage's time per request.
 * With a kept handle it is two: an `lstat` of the path, which must still name the inode the
 * handle has open (a file deleted or replaced through another member of the group, or a path
 * turned into a symlink, is opened afresh and checked again, so nothing deleted is served), and
 * the read. Handles are kept only on local file systems (the storage keeps none on a network
 * file system, Stores.local), where that `lstat` is made synchronously: it answers from the
 * kernel's inode cache in a few microseconds, less than the thread pool's round trip costs.
 *
 * Bounded: at most `max` handles (0: none, each read opens and closes; the storage keeps none on
 * a network file system, Stores.local) (least recently used go first) and none unused for longer than
 * `idleMs` (a file deleted through another member is not held open, its space not pinned, for
 * longer than that). A handle is closed only when no read is using it. Files never change once
 * recorded, so a kept handle's size is the file's.
 */
export interface OpenFile {
  fh: FileHandle;
  size: number;
  /** Gives the handle back (closed now if it was dropped meanwhile). */
  release(): void;
}

interface Entry {
  fh: FileHandle;
  ino: number;
  dev: number;
  size: number;
  users: number;
  dropped: boolean;
  usedAt: number;
}

export class OpenFiles {
  readonly #max: number;
  readonly #idleMs: number;
  readonly #m = new Map<string, Entry>();
  readonly #sweeper: ReturnType<typeof setInterval>;
  #closed = false;

  readonly #verify: boolean;

  /**
   * `verify` false: the files are this storage's alone (`storesShared` false): nothing but its
   * own deletes, which `forget` their path, removes or replaces one, so a kept handle is lent
   * without the `lstat` of its path.
   */
  constructor(max = 128, idleMs = 10_000, verify = true) {
    this.#max = max;
    this.#idleMs = idleMs;
    this.#verify = verify;
    this.#sweeper = setInterval(() => this.#sweep(), Math.max(100, Math.floor(idleMs / 2)));
    this.#sweeper.unref();
  }

  get size(): number {
    return this.#m.size;
  }

  /**
   * `path` open for reading: a kept handle when the path still names its inode, else a new one,
   * which `check(fh)` vets (throws to refuse it; the handle is closed then) before it is kept.
   * Raw fs errors pass (ENOENT for a deleted file).
   */
  async open(path: string, check: (fh: FileHandle) => Promise<void>): Promise<OpenFile> {
    if (this.#max === 0) return this.#once(path, check);
    const kept = this.#m.get(path);
    if (kept && !this.#verify && !kept.dropped) return this.#lend(path, kept);
    if (kept) {
      let st: ReturnType<typeof lstatSync> | null = null;
      try {
        st = lstatSync(path, { throwIfNoEntry: false }) ?? null;
      } catch {
        st = null;
      }
      if (st && !kept.dropped && st.ino === kept.ino && st.dev === kept.dev && st.isFile()) {
        return this.#lend(path, kept);
      }
      this.#drop(path, kept);
    }
    const fh = await open(path, 'r');
    let st: Awaited<ReturnType<FileHandle['stat']>>;
    try {
      await check(fh);
      st = await fh.stat();
    } catch (e) {
      await fh.close().catch(() => {});
      throw e;
    }
    const e: Entry = { fh, ino: st.ino, dev: st.dev, size: st.size, users: 0, dropped: false, usedAt: 0 };
    const other = this.#m.get(path);
    if (this.#closed || other) {
      // closing, or a concurrent open of the same path won: this handle serves this read only
      e.dropped = true;
      return this.#lend(path, e);
    }
    this.#m.set(path, e);
    while (this.#m.size > this.#max) {
      const [oldest, entry] = this.#m.entries().next().value as [string, Entry];
      this.#drop(oldest, entry);
    }
    return this.#lend(path, e);
  }

  /** `path` opened, checked and closed after this one read (`max` 0: nothing is kept). */
  async #once(path: string, check: (fh: FileHandle) => Promise<void>): Promise<OpenFile> {
    const fh = await open(path, 'r');
    try {
      await check(fh);
      const st = await fh.stat();
      let closed = false;
      return {
        fh,
        size: st.size,
        release: () => {
          if (closed) return;
          closed = true;
          void fh.close().catch(() => {});
        },
      };
    } catch (e) {
      await fh.close().catch(() => {});
      throw e;
    }
  }

  /** Forgets `path` (a delete through this storage): its handle closes once unused. */
  forget(path: string): void {
    const e = this.#m.get(path);
    if (e) this.#drop(path, e);
  }

  /** Closes every handle not in use (the rest close when their reads end). */
  close(): void {
    this.#closed = true;
    clearInterval(this.#sweeper);
    for (const [p, e] of [...this.#m]) this.#drop(p, e);
  }

  #lend(path: string, e: Entry): OpenFile {
    e.users++;
    if (!e.dropped) {
      // most recently used last
      this.#m.delete(path);
      this.#m.set(path, e);
    }
    let given = false;
    return {
      fh: e.fh,
      size: e.size,
      release: () => {
        if (given) return;
        given = true;
        e.users--;
        e.usedAt = performance.now();
        if (e.dropped && e.users === 0) void e.fh.close().catch(() => {});
      },
    };
  }

  #drop(path: string, e: Entry): void {
    if (this.#m.get(path) === e) this.#m.delete(path);
    if (e.dropped) return;
    e.dropped = true;
    if (e.users === 0) void e.fh.close().catch(() => {});
  }

  #sweep(): void {
    const cutoff = performance.now() - this.#idleMs;
    for (const [p, e] of [...this.#m]) if (e.users === 0 && e.usedAt < cutoff) this.#drop(p, e);
  }
}
