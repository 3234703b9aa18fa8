import type { StreamReply } from '@dsm/client';
import { DsmError, ErrorCode } from '@dsm/common/errors';
import { concatBytes, type FileIds } from '@dsm/packets';
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
 *
 * With a `store` (the Worker: the Cache API of its colo, edge-cache.ts) a slice this process
 * does not hold is looked up there before it is read from the storage, and a slice read whole
 * from the storage is put there. A slice is then read in one piece (never split at the first
 * request's position, see Slice): one storage request per slice.
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
   * Slice `index` of the file: kept, being read (shared), or read now through `source` (from
   * the store first when there is one; else from `firstWanted` first, see Slice). `keep`: kept
   * slices (and the store) may be served and the new one kept (false while the delete journal
   * cannot be read).
   */
  #slice(source: SliceSource, f: SlicedFile, index: number, keep: boolean, firstWanted: number): Slice {
    const key = `${f.publicId}/${f.etag}/${index}`;
    if (keep) {
      const kept = this.#kept.get(key);
      if (kept) return kept;
    }
    const shared = this.#reading.get(key);
    if (shared) return shared;
    const offset = index * this.sliceBytes;
    const length = Math.min(this.sliceBytes, f.size - offset);
    const store = keep ? this.#store : undefined;
    const slice = new Slice(length, store ? 0 : firstWanted);
    this.#reading.set(key, slice);
    const gen = this.#gen;
    const settled = () => {
      if (this.#reading.get(key) === slice) this.#reading.delete(key);
      if (slice.ok && keep && gen === this.#gen) this.#kept.set(key, slice);
    };
    const skey = { publicId: f.publicId, etag: f.etag, sliceBytes: this.sliceBytes, index, length };
    const done = this.#fill(source, store, skey, f.ids, offset, slice, gen).then(settled);
    source.started?.(done);
    return slice;
  }

  /** Fills a new slice: from the store, else from the storage (and then into the store). Never throws. */
  async #fill(
    source: SliceSource,
    store: SliceStore | undefined,
    key: SliceKey,
    ids: FileIds,
    offset: number,
    slice: Slice,
    gen: number,
  ): Promise<void> {
    if (store) {
      const hit = await store.get(key).catch(() => null);
      if (hit && hit.length === slice.length) {
        const run = slice.runs[0] as Run;
        slice.push(run, hit);
        slice.finish(run);
        return;
      }
    }
    source.onRead?.();
    // the run the first request wants goes first
    await Promise.all([...slice.runs].reverse().map((run) => this.#readRun(source, ids, offset, slice, run)));
    // a slice read across an invalidation is not stored (as it is not kept)
    if (!store || !slice.ok || gen !== this.#gen) return;
    await store.put(key, concatBytes(slice.runs.flatMap((r) => r.chunks))).catch(() => {});
  }

  async #readRun(
    source: SliceSource,
    ids: FileIds,
    sliceOffset: number,
    slice: Slice,
    run: Run,
  ): Promise<void> {
    try {
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
    const get = (index: number, firstWanted: number) => this.#slice(o.source, f, index, o.keep, firstWanted);
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
