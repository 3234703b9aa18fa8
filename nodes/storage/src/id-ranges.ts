import { isRemoteError } from '@dsm/client';
import type { Logger } from '@dsm/common';
import { Errno, type IdRange } from '@dsm/packets';

interface KeyState {
  next: number;
  end: number;
  /** The range fetched ahead, used once the current one is spent. */
  spare: IdRange | null;
  fetching: Promise<void> | null;
}

/** How long a server without the range extension is asked one id at a time before trying again. */
const FALLBACK_MS = 60_000;

/**
 * Ids for new files taken from ranges the storage reserves from the id server (extension 41):
 * one request per `size` uploads instead of one per upload. The next range is fetched when a
 * quarter of the current one is left, so uploads rarely wait for it.
 *
 * Never repeated: each range is a segment of its own in the id server's database (reserved by
 * the same atomic step as every segment), so no other storage, member of the group or restart
 * of this one gets an id of it. What is left of a range when the storage stops is skipped, like
 * the rest of an id server's segment after its restart: at most `2 × size` ids per key per
 * restart, out of 2^53.
 *
 * An id server without the extension (errno UNKNOWN_COMMAND) is asked one id at a time
 * (`single`) for FALLBACK_MS, then the range request is tried again.
 */
export class IdRanges {
  readonly #range: (key: string, count: number) => Promise<IdRange>;
  readonly #single: (key: string) => Promise<number>;
  readonly #size: number;
  readonly #log: Logger;
  readonly #keys = new Map<string, KeyState>();
  #singleUntil = 0;

  constructor(
    range: (key: string, count: number) => Promise<IdRange>,
    single: (key: string) => Promise<number>,
    size: number,
    log: Logger,
  ) {
    if (!Number.isSafeInteger(size) || size < 1) throw new RangeError(`bad range size: ${size}`);
    this.#range = range;
    this.#single = single;
    this.#size = size;
    this.#log = log;
  }

  async next(key: string): Promise<number> {
    let st = this.#keys.get(key);
    if (!st) {
      st = { next: 0, end: 0, spare: null, fetching: null };
      this.#keys.set(key, st);
    }
    for (let round = 0; ; round++) {
      if (st.next >= st.end && st.spare) {
        st.next = st.spare.first;
        st.end = st.spare.first + st.spare.count;
        st.spare = null;
      }
      if (st.next < st.end) {
        const id = st.next++;
        if (st.end - st.next < this.#size / 4 && !st.spare && !st.fetching) {
          void this.#fetch(key, st).catch(() => {}); // the next caller that needs it sees the error
        }
        return id;
      }
      if (Date.now() < this.#singleUntil) return this.#single(key);
      if (round > 2) throw new Error(`no id range for ${key}`);
      await this.#fetch(key, st);
    }
  }

  #fetch(key: string, st: KeyState): Promise<void> {
    st.fetching ??= this.#range(key, this.#size)
      .then(
        (r) => {
          if (r.count < 1) throw new Error(`empty id range for ${key}`);
          st.spare = r;
        },
        (e: unknown) => {
          if (!isRemoteError(e, Errno.UNKNOWN_COMMAND)) throw e;
          this.#log.warn({ key }, 'the id server has no range extension; asking one id at a time');
          this.#singleUntil = Date.now() + FALLBACK_MS;
        },
      )
      .finally(() => {
        st.fetching = null;
      });
    return st.fetching;
  }
}
