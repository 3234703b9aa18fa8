import type { StreamReply } from '@dsm/client';
import { DsmError, ErrorCode } from '@dsm/common/errors';
import type { FileIds } from '@dsm/packets';
import { ByteLru } from './byte-lru.ts';

/**
 * Range coalescing (config `rangeCache`): replies from big files are cut along aligned slices of
 * `sliceBytes`; each slice is read from the storage once, whatever number of requests want it at
 * the same time, and its bytes go to every one of them as they arrive (the first byte does not
 * wait for the whole slice). Finished slices stay in a ByteLru of `maxBytes`.
 *
 * Memory: a slice being read is at most `sliceBytes`, and a reply holds at most two (the one it
 * sends and the next, read ahead); a reply whose client stops reading drops them after
 * `stallMs`, so a slow reader pins no more than one reply's worth, and only for that long.
 */

/** A run of a slice: bytes [off, off + length) of it, as they came from one storage read. */
class Run {
  readonly chunks: Uint8Array[] = [];
  received = 0;
  done = false;
  error: unknown = undefined;

  constructor(
    readonly off: number,
    readonly length: number,
  ) {}
}

/**
 * One slice: one run, or two when the request that asked for it first starts inside it (the bytes
 * it wants first are then read at once, not after the part of the slice before them).
 */
class Slice {
  readonly runs: Run[];
  #waiters: (() => void)[] = [];

  constructor(
    readonly length: number,
    firstWanted: number,
  ) {
    this.runs =
      firstWanted > 0 && firstWanted < length
        ? [new Run(0, firstWanted), new Run(firstWanted, length - firstWanted)]
        : [new Run(0, length)];
  }

  get byteLength(): number {
    return this.length;
  }

  get done(): boolean {
    return this.runs.every((r) => r.done);
  }

  get ok(): boolean {
    return this.runs.every((r) => r.done && r.error === undefined && r.received === r.length);
  }

  runAt(rel: number): Run {
    const rs = this.runs;
    return (rs.length > 1 && rel >= (rs[1] as Run).off ? rs[1] : rs[0]) as Run;
  }

  push(r: Run, c: Uint8Array): void {
    r.chunks.push(c);
    r.received += c.length;
    this.#wake();
  }

  finish(r: Run, error?: unknown): void {
    r.done = true;
    r.error = error;
    this.#wake();
  }

  /** Resolves when byte `rel` of the slice arrived, or its run ended. */
  wait(rel: number): Promise<void> | null {
    const r = this.runAt(rel);
    if (r.received > rel - r.off || r.done) return null;
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  #wake(): void {
    const w = this.#waiters;
    if (w.length === 0) return;
    this.#waiters = [];
    for (const r of w) r();
  }
}

export interface SliceSource {
  /** `length` bytes from `offset` (one storage request). */
  read(ids: FileIds, offset: number, length: number): Promise<StreamReply>;
  /** Counted for every slice read from the storage (the metric). */
  onRead?(): void;
}

export class SliceCache {
  readonly sliceBytes: number;
  readonly #kept: ByteLru<Slice>;
  readonly #reading = new Map<string, Slice>();
  readonly #source: SliceSource;
  /** Bumped by every invalidation: a read that started before one is not kept. */
  #gen = 0;

  constructor(opts: { sliceBytes: number; maxBytes: number }, source: SliceSource) {
    this.sliceBytes = opts.sliceBytes;
    this.#kept = new ByteLru(opts.maxBytes);
    this.#source = source;
  }

  /** Bytes of the slices kept (bounded by `maxBytes`). */
  get bytes(): number {
    return this.#kept.bytes;
  }

  /** Slice reads under way (each at most `sliceBytes`). */
  get reading(): number {
    return this.#reading.size;
  }

  forget(publicId: string): void {
    this.#gen++;
    this.#kept.deletePrefix(`${publicId}/`);
    for (const k of [...this.#reading.keys()]) if (k.startsWith(`${publicId}/`)) this.#reading.delete(k);
  }

  /**
   * Drops every kept slice (the delete journal cannot say what was deleted). Reads under way
   * stay shared with requests that come while they run (as if those had come a moment earlier)
   * but are not kept.
   */
  clear(): void {
    this.#gen++;
    this.#kept.clear();
  }

  /**
   * Slice `index` of the file: kept, being read (shared), or read now (from `firstWanted`
   * first, see Slice). `keep`: kept slices may be served and the new one kept (false while the
   * delete journal cannot be read).
   */
  #slice(
    publicId: string,
    etag: string,
    ids: FileIds,
    size: number,
    index: number,
    keep: boolean,
    firstWanted: number,
  ): Slice {
    const key = `${publicId}/${etag}/${index}`;
    if (keep) {
      const kept = this.#kept.get(key);
      if (kept) return kept;
    }
    const shared = this.#reading.get(key);
    if (shared) return shared;
    const offset = index * this.sliceBytes;
    const slice = new Slice(Math.min(this.sliceBytes, size - offset), firstWanted);
    this.#reading.set(key, slice);
    const gen = this.#gen;
    this.#source.onRead?.();
    const settled = () => {
      if (!slice.done) return;
      if (this.#reading.get(key) === slice) this.#reading.delete(key);
      if (slice.ok && keep && gen === this.#gen) this.#kept.set(key, slice);
    };
    // the run the first request wants goes first
    for (const run of [...slice.runs].reverse()) {
      void this.#readRun(ids, offset, slice, run).then(settled);
    }
    return slice;
  }

  async #readRun(ids: FileIds, sliceOffset: number, slice: Slice, run: Run): Promise<void> {
    try {
      const reply = await this.#source.read(ids, sliceOffset + run.off, run.length);
      let ok = reply.length === run.length;
      for await (const c of reply.stream) {
        if (!ok) break;
        if (run.received + c.length > run.length) {
          ok = false;
          break;
        }
        slice.push(run, c);
      }
      if (!ok || run.received !== run.length) {
        throw new DsmError(
          ErrorCode.PROTOCOL,
          `the storage sent ${Math.max(run.received, reply.length)} of ${run.length} bytes of a slice`,
        );
      }
      slice.finish(run);
    } catch (e) {
      slice.finish(run, e ?? new Error('slice read failed'));
    }
  }

  /**
   * `length` bytes of the file from `start`, as a pull-based stream (the next bytes are taken
   * only when the HTTP side asks). `onEnd` is called once (error, cancelled by the client).
   */
  stream(
    f: { publicId: string; etag: string; ids: FileIds; size: number },
    start: number,
    length: number,
    o: {
      keep: boolean;
      stallMs: number;
      onChunk?: (n: number) => void;
      onEnd?: (error: unknown, cancelled: boolean) => void;
    },
  ): ReadableStream<Uint8Array> {
    const S = this.sliceBytes;
    const end = start + length;
    let pos = start;
    let cur: Slice | null = null;
    let curIndex = -1;
    // cursor in cur: the run, its chunk number, and the file position where that chunk starts
    let run: Run | null = null;
    let ci = 0;
    let ciStart = 0;
    let next: Slice | null = null;
    let finished = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const finish = (e: unknown, cancelled = false) => {
      if (timer) clearTimeout(timer);
      cur = null;
      next = null;
      run = null;
      if (finished) return;
      finished = true;
      o.onEnd?.(e, cancelled);
    };
    const get = (index: number, firstWanted: number) =>
      this.#slice(f.publicId, f.etag, f.ids, f.size, index, o.keep, firstWanted);
    return new ReadableStream<Uint8Array>(
      {
        pull: async (ctrl) => {
          if (timer) clearTimeout(timer);
          try {
            if (pos >= end) {
              finish(undefined);
              ctrl.close();
              return;
            }
            const index = Math.floor(pos / S);
            const base = index * S;
            if (!cur || curIndex !== index) {
              cur = next && curIndex + 1 === index ? next : get(index, pos - base);
              next = null;
              curIndex = index;
              run = null;
            }
            const slice = cur;
            for (;;) {
              const w = slice.wait(pos - base);
              if (!w) break;
              await w;
            }
            const r = slice.runAt(pos - base);
            if (r.received <= pos - base - r.off) {
              throw r.error ?? new DsmError(ErrorCode.PROTOCOL, 'slice ended early');
            }
            // the chunk holding pos
            if (run !== r || ciStart > pos) {
              run = r;
              ci = 0;
              ciStart = base + r.off;
            }
            for (;;) {
              const c = r.chunks[ci] as Uint8Array;
              if (pos < ciStart + c.length) break;
              ciStart += c.length;
              ci++;
            }
            const c = r.chunks[ci] as Uint8Array;
            const out = c.subarray(pos - ciStart, Math.min(c.length, end - ciStart));
            pos += out.length;
            o.onChunk?.(out.length);
            ctrl.enqueue(out);
            if (pos >= end) {
              finish(undefined);
              ctrl.close();
              return;
            }
            // the next slice is read ahead once this one flows (not before: the first byte
            // does not share the storage with it)
            if (!next && (index + 1) * S < end) next = get(index + 1, 0);
            // a client that stops reading pins no slice: they are looked up again on its next pull
            timer = setTimeout(() => {
              cur = null;
              next = null;
              run = null;
              curIndex = -1;
            }, o.stallMs);
            (timer as { unref?: () => void }).unref?.();
          } catch (e) {
            finish(e);
            ctrl.error(e);
          }
        },
        cancel: (reason) => {
          finish(reason, true);
        },
      },
      { highWaterMark: 0 },
    );
  }
}
