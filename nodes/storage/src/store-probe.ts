import { open, unlink } from 'node:fs/promises';
import type { Logger } from '@dsm/common';

/**
 * Tells whether this storage's stores take writes: every `intervalMs` it writes, fsyncs and
 * removes a small file in each store, next to this process's temp folder (`.tmp/<owner>.probe`,
 * on the same volume as an upload's temp file, outside the folder itself).
 * A probe that fails (ENOTCONN or EROFS when a GlusterFS member lost its quorum, EIO, ENOSPC)
 * or that has not finished after `timeoutMs` (a volume waiting out `network.ping-timeout`)
 * makes `writable` false until a later probe passes. The heartbeat carries it (BEAT_EXT store
 * flags), so the trackers hand this storage out last and `dsm status` shows it.
 */
export class StoreProbe {
  writable = true;
  /** Why the last probe failed (`null` while writable). */
  reason: string | null = null;
  readonly #timer: ReturnType<typeof setInterval>;
  #pending: { since: number; done: Promise<void> } | null = null;
  #closed = false;

  constructor(
    /** One probe file per store. */
    readonly files: readonly string[],
    readonly intervalMs: number,
    readonly timeoutMs: number,
    readonly log: Logger,
    /** Called when `writable` changes (the tracker links beat at once). */
    readonly onChange: (writable: boolean) => void = () => {},
  ) {
    this.#timer = setInterval(() => void this.check(), intervalMs);
    this.#timer.unref();
  }

  /** Runs one probe unless one is still running (then only checks its age). */
  check(now = Date.now()): Promise<boolean> {
    if (this.#closed) return Promise.resolve(this.writable);
    const p = this.#pending;
    if (p) {
      if (now - p.since >= this.timeoutMs)
        this.#set(false, `a write probe has not finished after ${this.timeoutMs} ms`);
      return Promise.resolve(this.writable);
    }
    const done = this.#probe().then(
      () => this.#set(true, null),
      (e: NodeJS.ErrnoException) => this.#set(false, `write probe failed: ${e.code ?? e.message}`),
    );
    const entry = { since: now, done };
    this.#pending = entry;
    // The deadline is checked by a timer of its own: the next interval may be long after it.
    // A timer runs on the event loop's clock, which can be behind Date.now() (the loop's time
    // is read once per turn): one that fires before the deadline by Date.now() waits the rest.
    let late: ReturnType<typeof setTimeout>;
    const atDeadline = () => {
      if (this.#pending !== entry) return;
      const left = entry.since + this.timeoutMs - Date.now();
      if (left > 0) {
        late = setTimeout(atDeadline, left);
        late.unref();
        return;
      }
      this.check();
    };
    late = setTimeout(atDeadline, this.timeoutMs);
    late.unref();
    return done.then(() => {
      clearTimeout(late);
      if (this.#pending === entry) this.#pending = null;
      return this.writable;
    });
  }

  async #probe(): Promise<void> {
    for (const path of this.files) {
      const fh = await open(path, 'w');
      try {
        await fh.write(`dsm store probe ${Date.now()}\n`);
        await fh.sync();
      } finally {
        await fh.close();
      }
      await unlink(path);
    }
  }

  #set(writable: boolean, reason: string | null): void {
    if (this.#closed) return;
    const changed = writable !== this.writable;
    this.writable = writable;
    this.reason = reason;
    if (!changed) return;
    if (writable) this.log.info('store takes writes again');
    else this.log.error({ reason }, 'store does not take writes; trackers will hand this storage out last');
    this.onChange(writable);
  }

  close(): void {
    this.#closed = true;
    clearInterval(this.#timer);
  }
}
