import { randomInt } from 'node:crypto';
import { DsmError, ErrorCode, type Logger, messageOf } from '@dsm/common';
import { isDbUnavailable, isUniqueViolation, type Schema } from '@dsm/db';
import type { KvStore } from '@dsm/kv';
import { Errno } from '@dsm/packets';
import type { Kysely } from 'kysely';
import { GROUP_NAME_RE } from './config.ts';
import type { Registry, StorageRecord } from './registry.ts';

export const ROUTE_FAIL = '[Tracker] Get Groupname Fail...';
/** Code of a database failure that is not an outage (a bug or a broken schema). */
const INTERNAL = 'DSM_ERR_INTERNAL';

/** Cache key of a route; the app id is alphanumeric, so the user id may hold anything. */
export function routeCacheKey(appId: string, userId: string): string {
  return `tracker:route:${appId}:${userId}`;
}

export interface GroupRouterOptions {
  db: Kysely<Schema>;
  kv: KvStore;
  registry: Registry;
  cacheTtlMs: number;
  log: Logger;
  /** Resolves once the tracker tables exist (runs the migration if it has not succeeded yet). */
  schemaReady: () => Promise<void>;
  /** Where each lookup was answered from (metrics): the cache, t_router, a new assignment, nowhere. */
  onLookup?: (source: RouteSource) => void;
  /** A route cache operation failed (metrics); the request goes on without the cache. */
  onCacheError?: (op: 'get' | 'set') => void;
}

export type RouteSource = 'cache' | 'database' | 'assigned' | 'none';

/** How a group's free space is scored when a new user is placed. */
export function groupFreeBytes(storages: readonly StorageRecord[]): number {
  // The storages of a group serve one replicated volume (the seed's GlusterFS layout), so each
  // reports (about) the same free space: the max is the group's free space; a sum would count
  // the same bytes once per storage and favour groups with more storages.
  let max = 0;
  for (const r of storages) if (r.freeBytes > max) max = r.freeBytes;
  return max;
}

/**
 * user → group for (appid, userid): route cache → `t_router` → assign. A new user goes to the
 * live group (≥ 1 ACTIVE storage) with the most free bytes (ties broken at random); the row is
 * inserted under UNIQUE (appid, userid), so trackers sharing a database agree: the loser of a
 * concurrent insert reads the winner's row. Routes are sticky: once stored they never move.
 */
export class GroupRouter {
  readonly #o: GroupRouterOptions;
  readonly #knownGroups = new Set<string>();
  readonly #pendingGroups = new Map<string, Promise<void>>();
  #lastCacheWarn = 0;

  constructor(opts: GroupRouterOptions) {
    this.#o = opts;
  }

  async route(appId: string, userId: string): Promise<string> {
    const key = routeCacheKey(appId, userId);
    const cached = await this.#cacheGet(key);
    if (cached !== null && GROUP_NAME_RE.test(cached)) {
      this.#o.onLookup?.('cache');
      return cached;
    }
    let group = await this.#read(appId, userId);
    if (group === null) {
      group = await this.#assign(appId, userId);
      this.#o.onLookup?.('assigned');
    } else this.#o.onLookup?.('database');
    await this.#cacheSet(key, group);
    return group;
  }

  /**
   * The group of a user already routed (route cache → `t_router`), or null: never assigns, so
   * reads by unknown users leave no state behind (only uploads route a new user).
   */
  async lookup(appId: string, userId: string): Promise<string | null> {
    const key = routeCacheKey(appId, userId);
    const cached = await this.#cacheGet(key);
    if (cached !== null && GROUP_NAME_RE.test(cached)) {
      this.#o.onLookup?.('cache');
      return cached;
    }
    const group = await this.#read(appId, userId);
    this.#o.onLookup?.(group === null ? 'none' : 'database');
    // only found routes are cached: a miss cached under an attacker's random user ids would be
    // the unbounded state this method exists to avoid
    if (group !== null) await this.#cacheSet(key, group);
    return group;
  }

  /** Records a joined group in `t_groups_info` if missing (best effort; never fails a join). */
  noteGroup(name: string): Promise<void> {
    if (this.#knownGroups.has(name)) return Promise.resolve();
    let p = this.#pendingGroups.get(name);
    if (!p) {
      p = this.#insertGroup(name)
        .then(() => {
          this.#knownGroups.add(name);
        })
        .catch((e) =>
          this.#o.log.warn({ err: messageOf(e), group: name }, 'cannot record the group in t_groups_info'),
        )
        .finally(() => this.#pendingGroups.delete(name));
      this.#pendingGroups.set(name, p);
    }
    return p;
  }

  /** Waits for background t_groups_info inserts (used on close). */
  async settle(): Promise<void> {
    await Promise.all([...this.#pendingGroups.values()]);
  }

  async #insertGroup(name: string): Promise<void> {
    await this.#o.schemaReady();
    const db = this.#o.db;
    const row = await db
      .selectFrom('t_groups_info')
      .select('id')
      .where('group_name', '=', name)
      .limit(1)
      .executeTakeFirst();
    if (!row) await db.insertInto('t_groups_info').values({ group_name: name }).execute();
  }

  async #read(appId: string, userId: string): Promise<string | null> {
    try {
      await this.#o.schemaReady();
      const row = await this.#o.db
        .selectFrom('t_router')
        .select('group_name')
        .where('appid', '=', appId)
        .where('userid', '=', userId)
        .limit(1)
        .executeTakeFirst();
      return row?.group_name ?? null;
    } catch (e) {
      return this.#fail(e, 'reading t_router');
    }
  }

  async #assign(appId: string, userId: string): Promise<string> {
    const group = this.#choose();
    try {
      await this.#o.db
        .insertInto('t_router')
        .values({ appid: appId, userid: userId, group_name: group })
        .execute();
      this.#o.log.info({ appId, userId, group }, 'user routed to a group');
      return group;
    } catch (e) {
      if (!isUniqueViolation(e)) return this.#fail(e, 'inserting into t_router');
    }
    // Another tracker (or request) placed this user first: its choice wins.
    const winner = await this.#read(appId, userId);
    if (winner === null) {
      throw new DsmError(INTERNAL, ROUTE_FAIL, Errno.INTERNAL);
    }
    this.#o.log.info(
      { appId, userId, group: winner },
      'user routed concurrently elsewhere; using that route',
    );
    return winner;
  }

  #choose(): string {
    let best: string[] = [];
    let bestFree = -1;
    for (const [name, recs] of this.#o.registry.activeGroups()) {
      const free = groupFreeBytes(recs);
      if (free > bestFree) {
        best = [name];
        bestFree = free;
      } else if (free === bestFree) {
        best.push(name);
      }
    }
    if (best.length === 0) throw new DsmError(ErrorCode.NO_STORAGE, ROUTE_FAIL, Errno.NO_STORAGE);
    return best.length === 1 ? (best[0] as string) : (best[randomInt(best.length)] as string);
  }

  #fail(e: unknown, what: string): never {
    if (e instanceof DsmError && e.code !== ErrorCode.DB_UNAVAILABLE) throw e;
    if (e instanceof DsmError || isDbUnavailable(e)) {
      this.#o.log.warn({ err: messageOf(e) }, `${what}: database unavailable`);
      throw new DsmError(ErrorCode.DB_UNAVAILABLE, ROUTE_FAIL, Errno.DB_UNAVAILABLE, { cause: e });
    }
    this.#o.log.error({ err: e }, `${what} failed`);
    throw new DsmError(INTERNAL, ROUTE_FAIL, Errno.INTERNAL, { cause: e });
  }

  async #cacheGet(key: string): Promise<string | null> {
    try {
      return await this.#o.kv.get(key);
    } catch (e) {
      this.#cacheWarn(e, 'get');
      return null;
    }
  }

  async #cacheSet(key: string, group: string): Promise<void> {
    try {
      await this.#o.kv.set(key, group, this.#o.cacheTtlMs);
    } catch (e) {
      this.#cacheWarn(e, 'set');
    }
  }

  /** A cache outage never fails a request; it is logged at warn, at most every 10 s. */
  #cacheWarn(e: unknown, op: 'get' | 'set'): void {
    this.#o.onCacheError?.(op);
    const now = Date.now();
    if (now - this.#lastCacheWarn < 10_000) return;
    this.#lastCacheWarn = now;
    this.#o.log.warn({ err: messageOf(e), op }, 'route cache unavailable; using the database');
  }
}
