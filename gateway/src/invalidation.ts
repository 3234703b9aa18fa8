import type { KvStore } from '@dsm/kv';

/**
 * The delete journal: how every gateway process learns of a delete made through any of them,
 * over the one thing they share, the KV store (`cache`: Redis, or the process's own memory).
 *
 * A delete appends the file's public id under the next number of a counter
 * (`files:deleted:<n>`, kept `ENTRY_TTL_MS`). Each process reads the counter at most every
 * `pollMs`, on demand (no timer: the Worker builds a core per request), and drops what it cached
 * of the ids appended since. Whatever it cannot account for (an entry gone or not written yet, a
 * counter that went back, too many at once, the store unreachable) drops everything cached.
 *
 * `usable()` tells a reader whether the caches may be served now: yes when the journal was read
 * less than `pollMs` ago; yes but with a read started when less than twice that; otherwise only
 * after a read that succeeds. So a delete through one gateway is seen by every other within
 * 2 × `pollMs`, and a process that cannot read the journal serves nothing from its caches.
 */
export class DeleteJournal {
  readonly #kv: KvStore;
  readonly #pollMs: number;
  readonly #onDeleted: (publicId: string) => void;
  readonly #onLost: () => void;
  #seen: number | null = null;
  /** performance.now() at the start of the last successful read. */
  #readAt = Number.NEGATIVE_INFINITY;
  #failedAt = Number.NEGATIVE_INFINITY;
  #reading: Promise<boolean> | null = null;

  constructor(
    kv: KvStore,
    pollMs: number,
    onDeleted: (publicId: string) => void,
    /** Everything cached must go (the journal cannot say what was deleted). */
    onLost: () => void,
  ) {
    this.#kv = kv;
    this.#pollMs = pollMs;
    this.#onDeleted = onDeleted;
    this.#onLost = onLost;
  }

  /** True (or a promise of it) when cached files may be served now; see the class comment. */
  usable(): boolean | Promise<boolean> {
    const age = performance.now() - this.#readAt;
    if (age < this.#pollMs) return true;
    const p = this.#read();
    return age < 2 * this.#pollMs ? true : p;
  }

  /** Records a delete for the other processes (after the storage deleted the file). */
  async publish(publicId: string): Promise<void> {
    const n = await this.#kv.incrBy(SEQ_KEY, 1);
    await this.#kv.set(entryKey(n), publicId, ENTRY_TTL_MS);
  }

  #read(): Promise<boolean> {
    if (this.#reading) return this.#reading;
    // a store that just failed is not asked again by every request: once per pollMs
    if (performance.now() - this.#failedAt < this.#pollMs) return Promise.resolve(false);
    const p = this.#readOnce().finally(() => {
      this.#reading = null;
    });
    this.#reading = p;
    return p;
  }

  async #readOnce(): Promise<boolean> {
    const started = performance.now();
    try {
      const raw = await this.#kv.get(SEQ_KEY);
      const seq = raw === null ? 0 : Number(raw);
      if (!Number.isSafeInteger(seq) || seq < 0) throw new Error(`bad journal counter ${raw}`);
      const seen = this.#seen;
      if (seen === null || seq < seen || seq - seen > MAX_BEHIND) {
        this.#onLost();
      } else if (seq > seen) {
        const ids = await Promise.all(
          Array.from({ length: seq - seen }, (_, i) => this.#kv.get(entryKey(seen + 1 + i))),
        );
        let lost = false;
        for (const id of ids) {
          if (id === null) lost = true;
          else this.#onDeleted(id);
        }
        if (lost) this.#onLost();
      }
      this.#seen = seq;
      this.#readAt = started;
      return true;
    } catch {
      this.#failedAt = performance.now();
      this.#readAt = Number.NEGATIVE_INFINITY;
      this.#onLost();
      return false;
    }
  }
}

const SEQ_KEY = 'files:deleted:seq';
const entryKey = (n: number) => `files:deleted:${n}`;
/** Journal entries outlive any poll interval by far; a reader further behind drops everything. */
const ENTRY_TTL_MS = 10 * 60_000;
/** More deletes than this since the last read: drop everything instead of reading them all. */
const MAX_BEHIND = 256;
