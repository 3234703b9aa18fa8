import type { StreamReply } from '@dsm/client';
import { DsmError, ErrorCode } from '@dsm/common/errors';
import { concatBytes, type FileIds } from '@dsm/packets';
import { ByteLru } from './byte-lru.ts';

/**
 * Range coalescing (config `rangeCache`): replies from big files are cut along aligned slices of
 * `sliceBytes`; a slice's bytes are read from the storage once, whatever number of requests want
 * them at the same time, and go to every one of them as they arrive (the first byte does not
 * wait for the whole slice). Finished slices stay in a ByteLru of `maxBytes`.
 *
 * A slice is read whole and kept only when more than one request wants it at the same time (a
 * CDN's edges fetching a popular segment, the storm this cache is for). A slice one request
 * wants alone (a player's seek, a segment's first fetch) is read from the byte that request
 * starts at to the byte it ends at, nothing before and nothing after, and not kept. Measured on a
 * 1 GiB file, 1 MiB ranges at random offsets, one at a time (docs/performance.md): reading every
 * slice whole and keeping it read 2 MiB per 1 MiB reply, and the kept slices, promoted to V8's
 * old generation, set off a major GC every few requests; those pauses were the p99 of the first
 * byte, 10-15 ms. Keeping the slices asked for twice within the last few thousand (a key list
 * without bytes) kept most of them in that run, and the GCs with them.
 *
 * Memory: a slice being read is at most `sliceBytes`, and a reply holds at most two (the one it
 * sends and the next, read ahead); a reply whose client stops reading drops them after
 * `stallMs`, so a slow reader pins no more than one reply's worth, and only for that long.
 *
 * With a `store` (the Worker: the Cache API of its colo, edge-cache.ts) a slice this process
 * does not hold is looked up there before it is read from the storage, and a slice is always
 * read whole, in one piece (one storage request per slice), and put there.
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
 * One slice, read in runs (one storage request each), sorted by offset, never overlapping. A new
 * slice gets the run its first request wants (`read`): from that request's position to its end
 * in the slice, or, when the slice is to be read whole, that run and then the rest. `whole()`
 * starts a run for every gap (a second request came): the slice can then be kept.
 */
class Slice {
  readonly runs: Run[] = [];
  #waiters: (() => void)[] = [];
  #pending = 0;
  #whole = false;
  /** Settled once every run started is over (read or failed). */
  readonly settled: Promise<void>;
  #settle!: () => void;

  constructor(
    readonly length: number,
    /** Starts reading a run (SliceCache: one storage request) and resolves when it is over. */
    readonly read: (run: Run) => Promise<void>,
  ) {
    this.settled = new Promise((resolve) => {
      this.#settle = resolve;
    });
  }

  get byteLength(): number {
    return this.length;
  }

  /** Every byte was read, without error (the slice may be kept). */
  get ok(): boolean {
    let at = 0;
    for (const r of this.runs) {
      if (r.off !== at || !r.done || r.error !== undefined || r.received !== r.length) return false;
      at += r.length;
    }
    return at === this.length;
  }

  /** The slice is read whole (or is being): it was wanted twice, or was read so from the start. */
  get isWhole(): boolean {
    return this.#whole;
  }

  /** Starts a run of bytes [from, to) of the slice. */
  start(from: number, to: number): void {
    const run = new Run(from, to - from);
    let i = 0;
    while (i < this.runs.length && (this.runs[i] as Run).off < from) i++;
    this.runs.splice(i, 0, run);
    this.#pending++;
    void this.read(run).finally(() => {
      if (--this.#pending === 0) this.#settle();
    });
  }

  /** Reads every byte no run holds yet (each gap one run): the slice becomes whole. */
  whole(): void {
    if (this.#whole) return;
    this.#whole = true;
    let at = 0;
    for (const r of [...this.runs]) {
      if (r.off > at) this.start(at, r.off);
      at = r.off + r.length;
    }
    if (at < this.length) this.start(at, this.length);
  }

  runAt(rel: number): Run | undefined {
    for (const r of this.runs) if (rel >= r.off && rel < r.off + r.length) return r;
    return undefined;
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

  /** Resolves when byte `rel` of the slice arrived, or its run ended (null: it is here, or no run holds it). */
  wait(rel: number): Promise<void> | null {
    const r = this.runAt(rel);
    if (!r || r.received > rel - r.off || r.done) return null;
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
  /** Counted for every read of (part of) a slice from the storage, with its length (the metrics). */
  onRead?(bytes: number): void;
  /**
   * A slice read this source started, settled when it is over (read and stored, or failed).
   * The Worker keeps the request that started it alive and its connections open until then:
   * other requests share the slice.
   */
  started?(done: Promise<void>): void;
}

/** A slice as a store knows it: the file, its ETag, the slicing and the slice's place in it. */
export interface SliceKey {
  publicId: string;
  etag: string;
  sliceBytes: number;
  index: number;
  /** The slice's length (`sliceBytes`, less for the last). */
  length: number;
}

/** Whole slices kept beyond this process's memory (the Worker: the Cache API, edge-cache.ts). */
export interface SliceStore {
  /** The slice's bytes, or null when the store does not have them. */
  get(key: SliceKey): Promise<Uint8Array | null>;
  /** Keeps a slice read whole from the storage. */
  put(key: SliceKey, bytes: Uint8Array): Promise<void>;
}

/** The file a stream or slice is of. */
export interface SlicedFile {
  publicId: string;
  /** `"<sha-256 hex>"`: a slice is of these bytes, whatever becomes of the id. */
  etag: string;
  ids: FileIds;
  size: number;
}

export class SliceCache {
  readonly sliceBytes: number;
  readonly #kept: ByteLru<Slice>;
  readonly #reading = new Map<string, Slice>();
  readonly #store: SliceStore | undefined;
  /** Bumped by every invalidation: a read that started before one is not kept. */
  #gen = 0;

  constructor(opts: { sliceBytes: number; maxBytes: number; store?: SliceStore }) {
    this.sliceBytes = opts.sliceBytes;
    this.#kept = new ByteLru(opts.maxBytes);
    this.#store = opts.store;
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
   * Slice `index` of the file, for a request that wants its bytes [firstWanted, wantedEnd): kept,
   * being read (shared: it is then read whole, to be kept), or read now through `source` (from
   * the store first when there is one, whole; else only those bytes, see the top of this file).
   * `keep`: kept slices (and the store) may be served and the new one kept (false while the
   * delete journal cannot be read).
   */
  #slice(
    source: SliceSource,
    f: SlicedFile,
    index: number,
    keep: boolean,
    firstWanted: number,
    wantedEnd: number,
  ): Slice {
    const key = `${f.publicId}/${f.etag}/${index}`;
    if (keep) {
      const kept = this.#kept.get(key);
      if (kept) return kept;
    }
    const shared = this.#reading.get(key);
    if (shared) {
      // a second request wants it: every byte is read, and the slice kept
      shared.whole();
      return shared;
    }
    const offset = index * this.sliceBytes;
    const length = Math.min(this.sliceBytes, f.size - offset);
    const store = keep ? this.#store : undefined;
    const gen = this.#gen;
    const skey = { publicId: f.publicId, etag: f.etag, sliceBytes: this.sliceBytes, index, length };
    const slice: Slice = new Slice(
      length,
      (run): Promise<void> =>
        store
          ? this.#fromStore(store, skey, source, f.ids, offset, slice, run)
          : this.#readRun(source, f.ids, offset, slice, run),
    );
    this.#reading.set(key, slice);
    if (store) {
      slice.whole();
    } else {
      const from = Math.min(Math.max(0, firstWanted), length - 1);
      slice.start(from, Math.max(from + 1, Math.min(length, wantedEnd)));
    }
    const done = slice.settled.then(async () => {
      try {
        if (!slice.ok || !keep || gen !== this.#gen) return;
        if (!store) {
          if (slice.isWhole) this.#kept.set(key, slice);
          return;
        }
        // still shared while the store takes it: a request in between is served from here, not
        // read again from the storage (it would find the store still without it)
        await store.put(skey, concatBytes(slice.runs.flatMap((r) => r.chunks))).catch(() => {});
      } finally {
        if (this.#reading.get(key) === slice) this.#reading.delete(key);
      }
    });
    source.started?.(done);
    return slice;
  }

  /** A whole slice from the store, else from the storage. Never throws. */
  async #fromStore(
    store: SliceStore,
    key: SliceKey,
    source: SliceSource,
    ids: FileIds,
    sliceOffset: number,
    slice: Slice,
    run: Run,
  ): Promise<void> {
    const hit = await store.get(key).catch(() => null);
    if (hit && hit.length === run.length) {
      slice.push(run, hit);
      slice.finish(run);
      return;
    }
    await this.#readRun(source, ids, sliceOffset, slice, run);
  }

  /** One run from the storage (one request). Never throws: an error ends the run. */
  async #readRun(
    source: SliceSource,
    ids: FileIds,
    sliceOffset: number,
    slice: Slice,
    run: Run,
  ): Promise<void> {
    try {
      source.onRead?.(run.length);
      const reply = await source.read(ids, sliceOffset + run.off, run.length);
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
    f: SlicedFile,
    start: number,
    length: number,
    o: {
      /** Reads the slices this stream is the first to want (its request's storage client). */
      source: SliceSource;
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
      this.#slice(o.source, f, index, o.keep, firstWanted, end - index * S);
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
            if (!r || r.received <= pos - base - r.off) {
              throw r?.error ?? new DsmError(ErrorCode.PROTOCOL, 'slice ended early');
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
