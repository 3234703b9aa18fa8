import { type DsmClient, encodePublicId, tryEach } from '@dsm/client';
import type { KvStore } from '@dsm/kv';
import type { Address, ClusterStatus } from '@dsm/packets';

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
 * Deletes made elsewhere (`dsm rm`, any client of the storage protocol) come from the storages'
 * delete log (StorageDeleteFeed), read in the same turn: the journal is read only when both are.
 *
 * `usable()` tells a reader whether the caches may be served now: yes when the journal was read
 * less than `pollMs` ago; yes but with a read started when less than twice that; otherwise only
 * after a read that succeeds, waited for at most `readWaitMs`. So a delete through one gateway is seen
 * by every other within 2 × `pollMs`, and a process that cannot read the journal serves nothing
 * from its caches.
 */
export class DeleteJournal {
  readonly #kv: KvStore;
  readonly #pollMs: number;
  readonly #onDeleted: (publicId: string) => void;
  readonly #onLost: () => void;
  readonly #feed: StorageDeleteFeed | undefined;
  readonly #onFailed: ((e: unknown) => void) | undefined;
  #seen: number | null = null;
  /** performance.now() at the start of the last successful read. */
  #readAt = Number.NEGATIVE_INFINITY;
  #failedAt = Number.NEGATIVE_INFINITY;
  #reading: Promise<boolean> | null = null;
  #waiting: { read: Promise<boolean>; p: Promise<boolean> } | null = null;

  constructor(
    kv: KvStore,
    pollMs: number,
    onDeleted: (publicId: string) => void,
    /** Everything cached must go (the journal cannot say what was deleted). */
    onLost: () => void,
    /** The storages' delete log (none: only deletes through gateways are heard of). */
    feed?: StorageDeleteFeed,
    /** A read failed (the caches are not served until one succeeds). */
    onFailed?: (e: unknown) => void,
  ) {
    this.#kv = kv;
    this.#pollMs = pollMs;
    this.#onDeleted = onDeleted;
    this.#onLost = onLost;
    this.#feed = feed;
    this.#onFailed = onFailed;
  }

  /**
   * True (or a promise of it) when cached files may be served now; see the class comment.
   * `client`: the one the storages' delete log is read through, when it must be read.
   */
  usable(client?: DsmClient): boolean | Promise<boolean> {
    const age = performance.now() - this.#readAt;
    if (age < this.#pollMs) return true;
    const p = this.#read(client);
    return age < 2 * this.#pollMs ? true : this.#waitAtMost(p);
  }

  /**
   * `read`, or false once it has taken `readWaitMs(pollMs)`: a slow store or storage (a dead
   * host not yet marked offline, its connect timing out) costs requests their cache hits, not
   * their time. One timer per read, however many requests wait.
   */
  #waitAtMost(read: Promise<boolean>): Promise<boolean> {
    if (this.#waiting?.read !== read) {
      const gaveUp = new Promise<boolean>((resolve) => {
        const t = setTimeout(resolve, readWaitMs(this.#pollMs), false) as unknown as {
          unref?: () => void;
        };
        t.unref?.();
      });
      this.#waiting = { read, p: Promise.race([read, gaveUp]) };
    }
    return this.#waiting.p;
  }

  /** Records a delete for the other processes (after the storage deleted the file). */
  async publish(publicId: string): Promise<void> {
    const n = await this.#kv.incrBy(SEQ_KEY, 1);
    await this.#kv.set(entryKey(n), publicId, ENTRY_TTL_MS);
  }

  #read(client: DsmClient | undefined): Promise<boolean> {
    if (this.#reading) return this.#reading;
    // a store that just failed is not asked again by every request: once per pollMs
    if (performance.now() - this.#failedAt < this.#pollMs) return Promise.resolve(false);
    const p = this.#readOnce(client).finally(() => {
      this.#reading = null;
    });
    this.#reading = p;
    return p;
  }

  async #readOnce(client: DsmClient | undefined): Promise<boolean> {
    const started = performance.now();
    try {
      if (this.#feed && !client) throw new Error('the storages delete log needs a client');
      const [raw, fromStorages] = await Promise.all([
        this.#kv.get(SEQ_KEY),
        this.#feed && client ? this.#feed.read(client) : [],
      ]);
      if (fromStorages === null) this.#onLost();
      else for (const id of fromStorages) this.#onDeleted(id);
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
    } catch (e) {
      this.#onFailed?.(e);
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
/**
 * How long a request waits for a journal read before it goes without the caches: a second, or
 * `pollMs` when that is longer. Not less: a read on a loaded machine (a tracker's status and
 * every group's log, with the store's) can take more than a short `pollMs`, and a burst of
 * requests sent past the caches for it reads what they would have shared (a CI run: a range
 * storm read its slices twice with a 50 ms wait).
 */
export const readWaitMs = (pollMs: number): number => Math.max(pollMs, 1000);

/** More deletes than this since the last read: drop everything instead of reading them all. */
const MAX_BEHIND = 256;

/**
 * The storages' delete log (STORAGE_DELETES, 81), group by group: every delete a storage makes,
 * through a gateway or not (`dsm rm`, any protocol client), is numbered in its group's database,
 * and this reads what came after the number it saw last. The groups come from a tracker's status
 * (refreshed every `GROUPS_REFRESH_MS`); each is asked of its live storages in turn (ACTIVE, then
 * ONLINE), and a group with none is skipped: nothing can be deleted through a storage that is down,
 * and its log is read from where it was left once one is back.
 */
export class StorageDeleteFeed {
  readonly #seen = new Map<string, number>();
  #groups: { at: number; list: { name: string; addrs: Address[] }[] } | null = null;

  /**
   * The public ids deleted since the last read, or null when that cannot be told (a group seen
   * for the first time, a log that was trimmed or went back, too many deletes at once). Throws
   * when the tracker or a group with live storages cannot be asked.
   */
  async read(client: DsmClient): Promise<string[] | null> {
    let groups = this.#groups;
    if (!groups || performance.now() - groups.at >= GROUPS_REFRESH_MS) {
      groups = { at: performance.now(), list: liveGroups(await client.tracker.status()) };
      this.#groups = groups;
    }
    const replies = await Promise.all(
      groups.list.map(async (g) => {
        if (g.addrs.length === 0) return null;
        const since = this.#seen.get(g.name);
        const r = await tryEach(
          g.addrs,
          (a) => client.storage.deletesSince(a, since ?? 0),
          0,
          () => true,
        );
        return { group: g.name, since, r };
      }),
    );
    let lost = false;
    const ids: string[] = [];
    for (const x of replies) {
      if (!x) continue;
      const { since, r } = x;
      this.#seen.set(x.group, r.latest);
      if (since === undefined || r.latest < since || r.deleted.length !== r.latest - since) {
        if (since !== r.latest) lost = true;
        continue;
      }
      for (const d of r.deleted) ids.push(encodePublicId(d));
    }
    // forget groups no longer listed: one that comes back is read as new
    for (const name of this.#seen.keys())
      if (!groups.list.some((g) => g.name === name)) this.#seen.delete(name);
    return lost ? null : ids;
  }
}

/** Each group's storages a delete could go through now: ACTIVE first, then ONLINE. */
function liveGroups(s: ClusterStatus): { name: string; addrs: Address[] }[] {
  return s.groups.map((g) => ({
    name: g.name,
    addrs: [...g.storages]
      .filter((x) => x.state !== 'OFFLINE')
      .sort((a, b) => (a.state === b.state ? 0 : a.state === 'ACTIVE' ? -1 : 1))
      .map((x) => ({ host: x.host, port: x.port })),
  }));
}

/** How long the feed uses a tracker's list of groups before asking again. */
const GROUPS_REFRESH_MS = 5_000;
