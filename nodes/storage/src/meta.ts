import { DsmError, ErrorCode, type Logger, messageOf } from '@dsm/common';
import { LruMap } from '@dsm/common/lru';
import { type FileTableName, isDbUnavailable, type Schema } from '@dsm/db';
import type { KvStore } from '@dsm/kv';
import { Errno, sameBytes } from '@dsm/packets';
import type { Kysely } from 'kysely';

/** One file's metadata row (`t_file_0N`). */
export interface FileMeta {
  table: FileTableName;
  fileId: string;
  appId: string | null;
  userId: string | null;
  /** `file_path` as recorded. */
  path: string;
  size: number;
  contentType: string | null;
  /** Lowercase hex, or null on rows written by the seed. */
  sha256: string | null;
  mtimeMs: number | null;
}

/**
 * Who a request says it is: the app and user of its id block. A file belongs to a request only
 * when the row's app and user equal these exactly (JavaScript string equality, not the
 * database's collation, which may ignore case or trailing spaces).
 */
export interface Owner {
  appId: string;
  userId: string;
  /**
   * False when the user id's bytes are not valid UTF-8: they were decoded with U+FFFD in place of
   * the bad bytes, so the text could equal another user's id. Such a request owns nothing.
   */
  exact: boolean;
}

const utf8 = new TextEncoder();

/** The owner named by a request: its decoded app and user ids and the user id's raw bytes. */
export function ownerOf(appId: string, userId: string, userIdBytes: Uint8Array): Owner {
  return { appId, userId, exact: sameBytes(utf8.encode(userId), userIdBytes) };
}

/**
 * Whether a recorded app/user pair is the requester's. A row without an owner (NULL app or user,
 * possible only in rows written outside dsm) belongs to nobody: no request can read or delete it.
 */
export function isOwner(appId: string | null, userId: string | null, o: Owner): boolean {
  return o.exact && appId !== null && userId !== null && appId === o.appId && userId === o.userId;
}

/** Cache key parts are escaped so that no (app, user) pair can spell another pair's key. */
function keyPart(s: string): string {
  let out = '';
  for (const b of utf8.encode(s)) {
    const ch = String.fromCharCode(b);
    out += /[A-Za-z0-9._~-]/.test(ch) ? ch : `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

export interface Found {
  meta: FileMeta;
  /** Came from the cache (may be stale by up to the TTL). */
  cached: boolean;
}

/**
 * Turns a database failure into the error reply: DB_UNAVAILABLE when it cannot be reached,
 * INTERNAL otherwise; `message` is the seed's text for the failed step.
 */
export function dbFailure(e: unknown, message: string): DsmError {
  if (e instanceof DsmError && e.code !== ErrorCode.CACHE_UNAVAILABLE) return e;
  if (isDbUnavailable(e)) {
    return new DsmError(ErrorCode.DB_UNAVAILABLE, `${message} (database unavailable)`, Errno.DB_UNAVAILABLE, {
      cause: e,
    });
  }
  return new DsmError(ErrorCode.IO, message, Errno.INTERNAL, { cause: e });
}

interface Cached {
  t: string;
  p: string;
  s: number;
  c: string | null;
  h: string | null;
  m: number | null;
  a: string | null;
  u: string | null;
}

function rowOf(m: FileMeta) {
  return {
    id: m.fileId,
    appid: m.appId,
    userid: m.userId,
    status: 0,
    file_path: m.path,
    file_size: m.size,
    content_type: m.contentType,
    sha256: m.sha256,
    mtime_ms: m.mtimeMs,
  };
}

/**
 * How long the delete log keeps an entry: a reader further behind than this (a gateway that did
 * not ask for so long) cannot know what was deleted and drops everything it cached.
 */
export const DELETE_LOG_KEEP_MS = 10 * 60_000;

const FILE_TABLES = new Set(['t_file_01', 't_file_02', 't_file_03']);

/**
 * Lookups kept in the process as objects, in front of the KV cache (MetaStore.findHot): a small
 * download's lookup was a KV read, a JSON parse and an escaped key, 12 % of what the storage
 * allocated per request. At most this many entries, each for at most HOT_MAX_MS (and never
 * longer than the KV cache's TTL), dropped by `evict` like the KV entry, and kept only once the
 * KV cache holds the lookup too. Short: a file read 1,000 times a second costs one KV read per
 * 5 s, and a KV cache that comes back empty (Redis restarted) is filled again within 5 s.
 */
const HOT_ENTRIES = 4096;
const HOT_MAX_MS = 5_000;

interface Hot {
  meta: FileMeta;
  until: number;
}

/** The hot map's key: the table, the id and the owner, each length-prefixed (no two spell one key). */
function hotKey(table: string, fileId: string, appId: string, userId: string): string {
  return `${table}${fileId.length}:${fileId}${appId.length}:${appId}${userId}`;
}

/**
 * File metadata: the user's table (by the seed's hash) in the database, with a read-through
 * cache `storage:meta:<fileid>:<app>:<user>` in the KV store. The cache is only an accelerator:
 * when it is down lookups go to the database, and a database outage does not fail lookups the
 * cache can answer (seed quirk 7).
 *
 * Tenant isolation: every lookup names the requester (`Owner`), and a row recorded for another
 * app or user is answered exactly like a missing one, after the same work (one cache read, one
 * SELECT by id): the table is chosen by the user id's hash, so users of one table could
 * otherwise reach each other's files by naming their file ids. The cache key carries the owner,
 * so another tenant's request never meets the entry, and a hit is checked against the owner too.
 */
export class MetaStore {
  readonly #db: Kysely<Schema>;
  readonly #kv: KvStore;
  readonly #ttlMs: number;
  readonly #log: Logger;
  readonly #hot = new LruMap<string, Hot>(HOT_ENTRIES);
  readonly #hotMs: number;
  #cacheWarnedAt = 0;

  constructor(db: Kysely<Schema>, kv: KvStore, ttlMs: number, log: Logger) {
    this.#db = db;
    this.#kv = kv;
    this.#ttlMs = ttlMs;
    this.#log = log;
    this.#hotMs = Math.min(ttlMs, HOT_MAX_MS);
  }

  /**
   * `owner`'s file `fileId` when a lookup of it is kept in the process (a cache hit: the caller
   * treats it like one from the KV cache, `Found.cached`), else null: ask `find`. Synchronous.
   */
  findHot(table: FileTableName, fileId: string, owner: Owner): FileMeta | null {
    if (this.#hotMs <= 0 || !owner.exact) return null;
    const key = hotKey(table, fileId, owner.appId, owner.userId);
    const h = this.#hot.get(key);
    if (!h) return null;
    if (h.until < Date.now()) {
      this.#hot.delete(key);
      return null;
    }
    // the key names the owner; the row's owner is checked again all the same
    return isOwner(h.meta.appId, h.meta.userId, owner) ? h.meta : null;
  }

  #keepHot(m: FileMeta): void {
    if (this.#hotMs <= 0 || m.appId === null || m.userId === null) return;
    this.#hot.set(hotKey(m.table, m.fileId, m.appId, m.userId), { meta: m, until: Date.now() + this.#hotMs });
  }

  static cacheKey(fileId: string, owner: { appId: string; userId: string }): string {
    return `storage:meta:${fileId}:${keyPart(owner.appId)}:${keyPart(owner.userId)}`;
  }

  #cacheDown(e: unknown): void {
    const now = Date.now();
    if (now - this.#cacheWarnedAt > 30_000) {
      this.#cacheWarnedAt = now;
      this.#log.warn({ err: messageOf(e) }, 'metadata cache unavailable; using the database');
    }
  }

  /**
   * Cache → database: `owner`'s file `fileId`, or null (missing or someone else's: the caller
   * cannot tell, and neither can the requester). Throws (raw) database errors.
   */
  async find(table: FileTableName, fileId: string, owner: Owner): Promise<Found | null> {
    const hot = this.findHot(table, fileId, owner);
    if (hot) return { meta: hot, cached: true };
    const hit = await this.#cacheGet(table, fileId, owner);
    if (hit) {
      this.#keepHot(hit);
      return { meta: hit, cached: true };
    }
    const meta = await this.findInDb(table, fileId, owner);
    // kept in the process only once the KV cache holds it too: while that cache is down,
    // lookups go to the database as they did, and the first one after it is back fills it again
    if (meta && (await this.#cacheSet(meta))) this.#keepHot(meta);
    return meta ? { meta, cached: false } : null;
  }

  /** The row of `fileId` when it is `owner`'s, else null (the same SELECT either way). */
  async findInDb(table: FileTableName, fileId: string, owner: Owner): Promise<FileMeta | null> {
    const row = await this.#db
      .selectFrom(table)
      .select(['id', 'appid', 'userid', 'file_path', 'file_size', 'content_type', 'sha256', 'mtime_ms'])
      .where('id', '=', fileId)
      .executeTakeFirst();
    if (!row || !isOwner(row.appid, row.userid, owner)) return null;
    return {
      table,
      fileId: row.id,
      appId: row.appid,
      userId: row.userid,
      path: row.file_path ?? '',
      size: Number(row.file_size ?? 0),
      contentType: row.content_type || null,
      sha256: row.sha256 ? row.sha256.toLowerCase() : null,
      mtimeMs: row.mtime_ms === null || row.mtime_ms === undefined ? null : Number(row.mtime_ms),
    };
  }

  async exists(table: FileTableName, fileId: string): Promise<boolean> {
    const row = await this.#db.selectFrom(table).select('id').where('id', '=', fileId).executeTakeFirst();
    return row !== undefined;
  }

  /** Inserts a row (status 0). Throws on a duplicate id (see isUniqueViolation). */
  async insert(m: FileMeta): Promise<void> {
    await this.#db.insertInto(m.table).values(rowOf(m)).execute();
  }

  /**
   * Inserts rows in one transaction: one multi-row INSERT per table, so one commit (one log
   * flush on MariaDB) for the whole batch. All or nothing: any failure (a duplicate id among
   * them) inserts none.
   */
  async insertBatch(ms: readonly FileMeta[]): Promise<void> {
    const first = ms[0];
    if (ms.length === 1 && first) return this.insert(first);
    const byTable = new Map<FileTableName, ReturnType<typeof rowOf>[]>();
    for (const m of ms) {
      const rows = byTable.get(m.table);
      if (rows) rows.push(rowOf(m));
      else byTable.set(m.table, [rowOf(m)]);
    }
    await this.#db.transaction().execute(async (trx) => {
      for (const [table, rows] of byTable) await trx.insertInto(table).values(rows).execute();
    });
  }

  /** Fills columns a seed row lacks (checksum, content type, mtime). */
  async complete(
    m: FileMeta,
    patch: { sha256?: string; contentType?: string; mtimeMs?: number },
  ): Promise<void> {
    await this.#db
      .updateTable(m.table)
      .set({
        ...(patch.sha256 !== undefined ? { sha256: patch.sha256 } : {}),
        ...(patch.contentType !== undefined ? { content_type: patch.contentType } : {}),
        ...(patch.mtimeMs !== undefined ? { mtime_ms: patch.mtimeMs } : {}),
      })
      .where('id', '=', m.fileId)
      .execute();
    if (m.appId !== null && m.userId !== null)
      await this.evict(m.fileId, { appId: m.appId, userId: m.userId });
  }

  /**
   * Deletes `owner`'s row; false when there was none. The caller found the row as `owner`'s
   * first (exact comparison); the owner columns in the WHERE keep a row that changed hands in
   * between out of reach.
   */
  async remove(table: FileTableName, fileId: string, owner: Owner): Promise<boolean> {
    if (!owner.exact) return false;
    const r = await this.#db
      .deleteFrom(table)
      .where('id', '=', fileId)
      .where('appid', '=', owner.appId)
      .where('userid', '=', owner.userId)
      .executeTakeFirst();
    return Number(r.numDeletedRows) > 0;
  }

  /**
   * Writes a delete of `owner`'s `fileId` to the group's delete log (schema.ts DeleteLogTable)
   * and returns its sequence number. The counter row stays locked until the commit, so deletes
   * commit in the order of their numbers: a reader that has seen n has seen every delete ≤ n.
   */
  async logDelete(
    fileId: string,
    owner: { appId: string; userId: string },
    nowMs = Date.now(),
  ): Promise<number> {
    return this.#db.transaction().execute(async (trx) => {
      const up = await trx
        .updateTable('t_delete_seq')
        .set((eb) => ({ seq: eb('seq', '+', 1) }))
        .where('id', '=', 1)
        .executeTakeFirst();
      if (Number(up.numUpdatedRows) !== 1)
        throw new Error('t_delete_seq has no row 1 (migration 0002 not run)');
      const row = await trx
        .selectFrom('t_delete_seq')
        .select('seq')
        .where('id', '=', 1)
        .executeTakeFirstOrThrow();
      const seq = Number(row.seq);
      await trx
        .insertInto('t_delete_log')
        .values({ seq, appid: owner.appId, userid: owner.userId, file_id: fileId, deleted_ms: nowMs })
        .execute();
      return seq;
    });
  }

  /**
   * The deletes after `since`: the last sequence number, and the ids of since+1 … latest when
   * they number 1…`max` and the log still holds them all (else none; see STORAGE_DELETES).
   */
  async deletesSince(
    since: number,
    max: number,
  ): Promise<{ latest: number; deleted: { appId: string; userId: string; fileId: string }[] }> {
    // the counter first: every delete up to it has committed (logDelete)
    const top = await this.#db
      .selectFrom('t_delete_seq')
      .select('seq')
      .where('id', '=', 1)
      .executeTakeFirst();
    const latest = Number(top?.seq ?? 0);
    if (latest <= since || latest - since > max) return { latest, deleted: [] };
    const rows = await this.#db
      .selectFrom('t_delete_log')
      .select(['seq', 'appid', 'userid', 'file_id'])
      .where('seq', '>', since)
      .where('seq', '<=', latest)
      .orderBy('seq')
      .execute();
    // trimmed (or never written): the reader cannot know what was deleted
    if (rows.length !== latest - since) return { latest, deleted: [] };
    return { latest, deleted: rows.map((r) => ({ appId: r.appid, userId: r.userid, fileId: r.file_id })) };
  }

  /** Drops log entries older than `beforeMs`; returns how many. */
  async trimDeleteLog(beforeMs: number): Promise<number> {
    const r = await this.#db.deleteFrom('t_delete_log').where('deleted_ms', '<', beforeMs).executeTakeFirst();
    return Number(r.numDeletedRows);
  }

  async evict(fileId: string, owner: { appId: string; userId: string }): Promise<void> {
    for (const t of FILE_TABLES) this.#hot.delete(hotKey(t, fileId, owner.appId, owner.userId));
    try {
      await this.#kv.del(MetaStore.cacheKey(fileId, owner));
    } catch (e) {
      this.#cacheDown(e);
    }
  }

  async #cacheGet(table: FileTableName, fileId: string, owner: Owner): Promise<FileMeta | null> {
    if (this.#ttlMs <= 0) return null;
    let raw: string | null;
    try {
      raw = await this.#kv.get(MetaStore.cacheKey(fileId, owner));
    } catch (e) {
      this.#cacheDown(e);
      return null;
    }
    if (!raw) return null;
    try {
      const v = JSON.parse(raw) as Cached;
      // The same id may exist for another user in another table; and an entry answers only its
      // owner (the key says so already; this holds even if two owners' keys ever met).
      if (v.t !== table || !FILE_TABLES.has(v.t) || typeof v.p !== 'string' || v.p === '') return null;
      if (!isOwner(v.a ?? null, v.u ?? null, owner)) return null;
      if (typeof v.s !== 'number' || !Number.isSafeInteger(v.s) || v.s < 0) return null;
      return {
        table,
        fileId,
        appId: v.a ?? null,
        userId: v.u ?? null,
        path: v.p,
        size: v.s,
        contentType: v.c ?? null,
        sha256: v.h ?? null,
        mtimeMs: v.m ?? null,
      };
    } catch {
      return null;
    }
  }

  /** Whether the KV cache now holds `m`. */
  async #cacheSet(m: FileMeta): Promise<boolean> {
    if (this.#ttlMs <= 0 || m.appId === null || m.userId === null) return false;
    const v: Cached = {
      t: m.table,
      p: m.path,
      s: m.size,
      c: m.contentType,
      h: m.sha256,
      m: m.mtimeMs,
      a: m.appId,
      u: m.userId,
    };
    try {
      await this.#kv.set(
        MetaStore.cacheKey(m.fileId, { appId: m.appId, userId: m.userId }),
        JSON.stringify(v),
        this.#ttlMs,
      );
      return true;
    } catch (e) {
      this.#cacheDown(e);
      return false;
    }
  }
}
