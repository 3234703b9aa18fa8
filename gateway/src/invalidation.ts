import { type DsmClient, encodePublicId, tryEach } from '@dsm/client';
import type { KvStore } from '@dsm/kv';
import type { Address, ClusterStatus } from '@dsm/packets';

/**
 * Where a DeleteJournal hears of deletes. `read` gives the public ids deleted since its last
 * read, or null when it cannot tell what was deleted (then everything cached goes); it throws
 * when it cannot be read. `publish` records a delete made through this gateway, after the
 * storage deleted the file.
 */
export interface DeleteSource {
  read(): Promise<string[] | null>;
  publish(publicId: string): Promise<void>;
}

/**
 * The delete journal: how a gateway process learns of deletes made through any gateway (and, on
 * Node, around them), so that nothing it cached of a deleted file is served again. What it
 * reads is its DeleteSource: on Node the storages' delete log (StorageDeleteFeed), which every
 * delete goes through; on the Worker a journal in the KV store (KvDeleteLog), which is all its
 * isolates share.
 *
 * The source is read at most every `pollMs`, on demand (no timer: the Worker builds a core per
 * request). Whatever it cannot account for, or a source that cannot be read, drops everything
 * cached.
 *
 * `usable()` tells a reader whether the caches may be served now: yes when the source was read
 * less than `pollMs` ago; yes but with a read started when less than twice that; otherwise only
 * after a read that succeeds, waited for at most `readWaitMs`. So a delete is seen by every
 * process within 2 × `pollMs`, and a process that cannot read its source serves nothing from
 * its caches.
 */
export class DeleteJournal {
  readonly #source: DeleteSource;
  readonly #pollMs: number;
  readonly #onDeleted: (publicId: string) => void;
  readonly #onLost: () => void;
  readonly #onFailed: ((e: unknown) => void) | undefined;
  /** performance.now() at the start of the last successful read. */
  #readAt = Number.NEGATIVE_INFINITY;
  #failedAt = Number.NEGATIVE_INFINITY;
  #reading: Promise<boolean> | null = null;
  #waiting: { read: Promise<boolean>; p: Promise<boolean> } | null = null;

  constructor(
    source: DeleteSource,
    pollMs: number,
    onDeleted: (publicId: string) => void,
    /** Everything cached must go (the source cannot say what was deleted). */
    onLost: () => void,
    /** A read failed (the caches are not served until one succeeds). */
    onFailed?: (e: unknown) => void,
  ) {
    this.#source = source;
    this.#pollMs = pollMs;
    this.#onDeleted = onDeleted;
    this.#onLost = onLost;
    this.#onFailed = onFailed;
  }

  /** True (or a promise of it) when cached files may be served now; see the class comment. */
  usable(): boolean | Promise<boolean> {
    const age = performance.now() - this.#readAt;
    if (age < this.#pollMs) return true;
    const p = this.#read();
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
  publish(publicId: string): Promise<void> {
    return this.#source.publish(publicId);
  }

  #read(): Promise<boolean> {
    if (this.#reading) return this.#reading;
    // a source that just failed is not asked again by every request: once per pollMs
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
      const ids = await this.#source.read();
      if (ids === null) this.#onLost();
      else for (const id of ids) this.#onDeleted(id);
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

/**
 * The Worker's DeleteSource, in the KV store its isolates share: a delete appends the file's
 * public id under the next number of a counter (`files:deleted:<n>`, kept `ENTRY_TTL_MS`); a
 * read takes the ids appended since the number it saw last. An entry gone or not written yet, a
 * counter that went back, or more than MAX_BEHIND at once: null (drop everything).
 */
export class KvDeleteLog implements DeleteSource {
  readonly #kv: KvStore;
  #seen: number | null = null;

  constructor(kv: KvStore) {
    this.#kv = kv;
  }

  async publish(publicId: string): Promise<void> {
    const n = await this.#kv.incrBy(SEQ_KEY, 1);
    await this.#kv.set(entryKey(n), publicId, ENTRY_TTL_MS);
  }

  async read(): Promise<string[] | null> {
    const raw = await this.#kv.get(SEQ_KEY);
    const seq = raw === null ? 0 : Number(raw);
    if (!Number.isSafeInteger(seq) || seq < 0) throw new Error(`bad journal counter ${raw}`);
    const seen = this.#seen;
    if (seen === null || seq < seen || seq - seen > MAX_BEHIND) {
      this.#seen = seq;
      return null;
    }
    const ids = await Promise.all(
      Array.from({ length: seq - seen }, (_, i) => this.#kv.get(entryKey(seen + 1 + i))),
    );
    this.#seen = seq;
    const found = ids.filter((id): id is string => id !== null);
    return found.length === ids.length ? found : null;
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
export class StorageDeleteFeed implements DeleteSource {
  readonly #client: DsmClient;
  readonly #seen = new Map<string, number>();
  #groups: { at: number; list: { name: string; addrs: Address[] }[] } | null = null;

  /** `client`: the one the tracker and the storages are asked through. */
  constructor(client: DsmClient) {
    this.#client = client;
  }

  /** Nothing to do: the storage logged the delete itself, before it removed the file. */
  publish(): Promise<void> {
    return Promise.resolve();
  }

  /**
   * The public ids deleted since the last read, or null when that cannot be told (a group seen
   * for the first time, a log that was trimmed or went back, too many deletes at once). Throws
   * when the tracker or a group with live storages cannot be asked.
   */
  async read(): Promise<string[] | null> {
    const client = this.#client;
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
