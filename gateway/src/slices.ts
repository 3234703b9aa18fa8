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

/** One slice: its chunks as they came from the storage. */
class Slice {
  readonly chunks: Uint8Array[] = [];
  received = 0;
  done = false;
  error: unknown = undefined;
  #waiters: (() => void)[] = [];

  constructor(readonly length: number) {}

  get byteLength(): number {
    return this.length;
  }

  push(c: Uint8Array): void {
    this.chunks.push(c);
    this.received += c.length;
    this.#wake();
  }

  finish(error?: unknown): void {
    this.done = true;
    this.error = error;
    this.#wake();
  }

  /** Resolves when more than `have` bytes arrived, or the read ended. */
  wait(have: number): Promise<void> | null {
    if (this.received > have || this.done) return null;
    return new Promise((r) => this.#waiters.push(r));
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
   * Slice `index` of the file: kept, being read (shared), or read now. `keep`: kept slices may
   * be served and the new one kept (false while the delete journal cannot be read).
   */
  #slice(publicId: string, etag: string, ids: FileIds, size: number, index: number, keep: boolean): Slice {
    const key = `${publicId}/${etag}/${index}`;
    if (keep) {
      const kept = this.#kept.get(key);
      if (kept) return kept;
    }
    const shared = this.#reading.get(key);
    if (shared) return shared;
    const offset = index * this.sliceBytes;
    const slice = new Slice(Math.min(this.sliceBytes, size - offset));
    this.#reading.set(key, slice);
    const gen = this.#gen;
    this.#source.onRead?.();
    void (async () => {
      try {
        const reply = await this.#source.read(ids, offset, slice.length);
        let ok = reply.length === slice.length;
        for await (const c of reply.stream) {
          if (!ok) break;
          if (slice.received + c.length > slice.length) {
            ok = false;
            break;
          }
          slice.push(c);
        }
        if (!ok || slice.received !== slice.length) {
          throw new DsmError(
            ErrorCode.PROTOCOL,
            `the storage sent ${Math.max(slice.received, reply.length)} bytes of a ${slice.length}-byte slice`,
          );
        }
        slice.finish();
        if (this.#reading.get(key) === slice) this.#reading.delete(key);
        if (keep && gen === this.#gen) this.#kept.set(key, slice);
      } catch (e) {
        if (this.#reading.get(key) === slice) this.#reading.delete(key);
        slice.finish(e ?? new Error('slice read failed'));
      }
    })();
    return slice;
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
    // cursor inside cur: chunk number and the file position where that chunk starts
    let ci = 0;
    let ciStart = 0;
    let next: Slice | null = null;
    let finished = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const finish = (e: unknown, cancelled = false) => {
      if (timer) clearTimeout(timer);
      cur = null;
      next = null;
      if (finished) return;
      finished = true;
      o.onEnd?.(e, cancelled);
    };
    const get = (index: number) => this.#slice(f.publicId, f.etag, f.ids, f.size, index, o.keep);
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
            if (!cur || curIndex !== index) {
              cur = next && curIndex + 1 === index ? next : get(index);
              next = null;
              curIndex = index;
              ci = 0;
              ciStart = index * S;
              // read the next slice ahead while this one is sent
              if ((index + 1) * S < end) next = get(index + 1);
            }
            const slice = cur;
            const base = index * S;
            for (;;) {
              const w = slice.wait(pos - base);
              if (!w) break;
              await w;
            }
            if (slice.received <= pos - base) {
              throw slice.error ?? new DsmError(ErrorCode.PROTOCOL, 'slice ended early');
            }
            // the chunk holding pos
            if (ciStart > pos) {
              ci = 0;
              ciStart = base;
            }
            for (;;) {
              const c = slice.chunks[ci] as Uint8Array;
              if (pos < ciStart + c.length) break;
              ciStart += c.length;
              ci++;
            }
            const c = slice.chunks[ci] as Uint8Array;
            const from = pos - ciStart;
            const to = Math.min(c.length, end - ciStart);
            const out = c.subarray(from, to);
            pos += out.length;
            o.onChunk?.(out.length);
            ctrl.enqueue(out);
            if (pos >= end) {
              finish(undefined);
              ctrl.close();
              return;
            }
            // a client that stops reading pins no slice: they are looked up again on its next pull
            timer = setTimeout(() => {
              cur = null;
              next = null;
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
