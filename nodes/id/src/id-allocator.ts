import { setTimeout as sleep } from 'node:timers/promises';
import { DsmError, ErrorCode, errorCodeOf, type Logger } from '@dsm/common';
import { type DbHandle, isDbUnavailable, isUniqueViolation, migrate } from '@dsm/db';
import { Errno } from '@dsm/packets';
import { sql } from 'kysely';

/**
 * Where segments come from. `reserve` must be atomic across every process sharing the store:
 * two callers never get the same base for one key.
 */
export interface SegmentStore {
  /** Makes sure the table exists. Idempotent; called again after a failure. */
  prepare(): Promise<void>;
  /** Moves the key's counter forward by `step` and returns the old value (the segment's base). */
  reserve(key: string, step: number): Promise<number>;
}

export interface DbSegmentStoreOptions {
  /** SQLite: how long to keep retrying while another connection holds the write lock. */
  busyWaitMs?: number;
  /** MySQL: attempts when two first reservations of a new key collide. */
  maxAttempts?: number;
  /**
   * Makes sure the schema is in place (the node's `NodeDatabase.ready`, which retries a database
   * that was down at start-up); default: run the id migrations.
   */
  ready?: () => Promise<void>;
}

function isBusy(e: unknown): boolean {
  const code = errorCodeOf(e) ?? '';
  return code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED');
}

function isDeadlock(e: unknown): boolean {
  const x = e as { code?: unknown; errno?: unknown };
  return x?.code === 'ER_LOCK_DEADLOCK' || x?.errno === 1213;
}

/**
 * Segments in table `t_id_gen (id, id_value)`: `id_value` is the start of the next unreserved
 * segment, as in the seed.
 *
 * - SQLite: one statement, `INSERT … ON CONFLICT (id) DO UPDATE SET id_value = id_value + step
 *   RETURNING id_value`. A single statement is atomic and holds the write lock only while it
 *   runs; no transaction spans an `await`. The connection's busy_timeout is set to 0 and a busy
 *   database is retried asynchronously: better-sqlite3 waits synchronously, which would freeze
 *   the process while another connection of the same process (a second server, a migration)
 *   holds the lock.
 * - MySQL: one transaction: `UPDATE … SET id_value = id_value + step` (the row lock is taken
 *   first, so a concurrent reservation waits for the commit), then `SELECT … FOR UPDATE` reads
 *   the new value; no row → `INSERT id_value = step`, base 0. Two first reservations of one
 *   key race on the INSERT: the loser (duplicate key or deadlock) retries and takes the UPDATE
 *   path.
 *
 * Unlike the seed (plain SELECT, then UPDATE), two id servers on one database can never
 * reserve the same segment.
 */
export class DbSegmentStore implements SegmentStore {
  readonly #h: Pick<DbHandle, 'db' | 'dialect'>;
  readonly #busyWaitMs: number;
  readonly #maxAttempts: number;
  readonly #ready: () => Promise<unknown>;

  constructor(handle: Pick<DbHandle, 'db' | 'dialect'>, opts: DbSegmentStoreOptions = {}) {
    this.#h = handle;
    this.#ready = opts.ready ?? (() => migrate(handle.db, handle.dialect, 'id'));
    this.#busyWaitMs = opts.busyWaitMs ?? 5000;
    this.#maxAttempts = opts.maxAttempts ?? 8;
  }

  async prepare(): Promise<void> {
    const { db, dialect } = this.#h;
    await this.#ready();
    // After migrate: it resets busy_timeout when it finishes.
    if (dialect === 'sqlite') await sql`PRAGMA busy_timeout = 0`.execute(db);
  }

  reserve(key: string, step: number): Promise<number> {
    return this.#h.dialect === 'sqlite' ? this.#reserveSqlite(key, step) : this.#reserveMysql(key, step);
  }

  async #reserveSqlite(key: string, step: number): Promise<number> {
    const { db } = this.#h;
    const deadline = Date.now() + this.#busyWaitMs;
    for (let attempt = 0; ; attempt++) {
      try {
        const row = await db
          .insertInto('t_id_gen')
          .values({ id: key, id_value: step })
          .onConflict((oc) =>
            oc.column('id').doUpdateSet({ id_value: sql<number>`coalesce(t_id_gen.id_value, 0) + ${step}` }),
          )
          .returning('id_value')
          .executeTakeFirstOrThrow();
        return Number(row.id_value) - step;
      } catch (e) {
        if (!isBusy(e) || Date.now() >= deadline) throw e;
        await sleep(Math.min(2 * 2 ** Math.min(attempt, 5), 50) * (0.5 + Math.random()));
      }
    }
  }

  async #reserveMysql(key: string, step: number): Promise<number> {
    const { db } = this.#h;
    for (let attempt = 1; ; attempt++) {
      try {
        return await db.transaction().execute(async (trx) => {
          const updated = await trx
            .updateTable('t_id_gen')
            .set({ id_value: sql<number>`coalesce(id_value, 0) + ${step}` })
            .where('id', '=', key)
            .executeTakeFirst();
          if (Number(updated.numUpdatedRows) === 0) {
            await trx.insertInto('t_id_gen').values({ id: key, id_value: step }).execute();
            return 0;
          }
          const row = await trx
            .selectFrom('t_id_gen')
            .select('id_value')
            .where('id', '=', key)
            .forUpdate()
            .executeTakeFirstOrThrow();
          return Number(row.id_value) - step;
        });
      } catch (e) {
        if (attempt >= this.#maxAttempts || !(isUniqueViolation(e) || isDeadlock(e))) throw e;
        await sleep(Math.random() * 5 * attempt);
      }
    }
  }
}

export interface IdAllocatorOptions {
  /** Segment size: ids handed out per reservation. */
  step: number;
  log?: Logger;
}

interface Segment {
  next: number;
  end: number;
}

/**
 * Ids per key from in-memory segments [base, base + step). The first request for a key, and
 * the one after its segment is used up, reserves the next segment from the store. Only one
 * reservation per key is in flight at a time (callers for that key wait for it); other keys
 * are not held up, and no lock is held across the store call for anything but that key.
 *
 * Ids of one key are handed out in increasing order; after a restart the unused rest of the
 * last segment is skipped, never repeated. A store failure fails the waiting requests with
 * errno DB_UNAVAILABLE ("GET ID Fail, Key: …"); the next request tries the store again.
 */
export class IdAllocator {
  readonly step: number;
  readonly #store: SegmentStore;
  readonly #log: Logger | undefined;
  readonly #segments = new Map<string, Segment>();
  readonly #pending = new Map<string, Promise<void>>();
  #prepared: Promise<void> | null = null;
  #reservations = 0;
  #failures = 0;

  constructor(store: SegmentStore, opts: IdAllocatorOptions) {
    if (!Number.isSafeInteger(opts.step) || opts.step < 1) throw new RangeError(`bad step: ${opts.step}`);
    this.#store = store;
    this.step = opts.step;
    this.#log = opts.log;
  }

  /** Store reservations made so far (each one is a database visit). */
  get reservations(): number {
    return this.#reservations;
  }

  /** Reservations that failed (the database was down or refused). */
  get failures(): number {
    return this.#failures;
  }

  /** Keys with a segment in memory. */
  get keys(): number {
    return this.#segments.size;
  }

  /** Ids left in each key's in-memory segment (0 = the next request reserves a new one). */
  *remaining(): IterableIterator<[key: string, left: number]> {
    for (const [key, seg] of this.#segments) yield [key, seg.end - seg.next];
  }

  /** Prepares the store once; after a failure the next call tries again. */
  prepare(): Promise<void> {
    if (!this.#prepared) {
      const p = this.#store.prepare();
      this.#prepared = p;
      p.catch(() => {
        if (this.#prepared === p) this.#prepared = null;
      });
    }
    return this.#prepared;
  }

  async next(key: string): Promise<number> {
    for (;;) {
      const seg = this.#segments.get(key);
      if (seg && seg.next < seg.end) return seg.next++;
      let pending = this.#pending.get(key);
      if (!pending) {
        pending = this.#refill(key).finally(() => this.#pending.delete(key));
        this.#pending.set(key, pending);
      }
      await pending;
    }
  }

  /**
   * `count` consecutive ids for `key` from a segment of their own, reserved in the store like
   * any other (one database visit): the range never overlaps a segment this or any other id
   * server hands out, before or after a restart. The in-memory segment is not used, so ranges
   * and single ids of one key are each increasing but interleave.
   */
  async range(key: string, count: number): Promise<{ first: number; count: number }> {
    if (!Number.isSafeInteger(count) || count < 1) throw new RangeError(`bad count: ${count}`);
    const first = await this.#reserve(key, count);
    return { first, count };
  }

  async #refill(key: string): Promise<void> {
    const base = await this.#reserve(key, this.step);
    this.#segments.set(key, { next: base, end: base + this.step });
  }

  async #reserve(key: string, step: number): Promise<number> {
    let base: number;
    try {
      await this.prepare();
      base = await this.#store.reserve(key, step);
      this.#reservations++;
    } catch (e) {
      this.#failures++;
      const unavailable = isDbUnavailable(e);
      const entry = { err: e, key };
      if (unavailable) this.#log?.warn(entry, 'id segment reservation failed: database unavailable');
      else this.#log?.error(entry, 'id segment reservation failed');
      throw new DsmError(ErrorCode.DB_UNAVAILABLE, `GET ID Fail, Key: ${key}`, Errno.DB_UNAVAILABLE, {
        cause: e,
      });
    }
    if (!Number.isSafeInteger(base) || base < 0 || !Number.isSafeInteger(base + step)) {
      this.#log?.error({ key, base }, 'id counter out of range');
      throw new DsmError(ErrorCode.RANGE, `GET ID Fail, Key: ${key}`, Errno.RANGE);
    }
    this.#log?.debug({ key, base, step }, 'reserved id segment');
    return base;
  }
}
