import { DsmError, ErrorCode, type Logger, redactUrl } from '@dsm/common';
import {
  type CreateDbOptions,
  createDb,
  type DbHandle,
  type DbRole,
  isDbUnavailable,
  migrate,
} from '@dsm/db';
import { Errno } from '@dsm/packets';

/** How often a database that was down at start-up is tried again (timer and on demand). */
export const DB_RETRY_MS = 2000;

export interface OpenDatabaseOptions {
  log: Logger;
  /** Passed to createDb (MySQL pool size, timeouts). */
  db?: CreateDbOptions;
  /** Period of the background retry and least gap between two on-demand tries. */
  retryMs?: number;
}

/**
 * A node's database, migrated for its role. `ready()` is what a request awaits before it
 * touches the database.
 */
export interface NodeDatabase extends DbHandle {
  readonly url: string;
  readonly migrated: boolean;
  /**
   * Resolves once the schema is in place. While the database is down it rejects with
   * DB_UNAVAILABLE at once (the last failure, if it is less than `retryMs` old) or after one
   * new migration attempt: requests fail fast, and the first one after the outage migrates.
   */
  ready(): Promise<void>;
}

/**
 * Opens the database of `role` with the one policy every node follows for a database that is
 * down at start-up: migrate at start; when it cannot be reached the node starts anyway, retries
 * on a timer (every `retryMs`) and on demand (`ready()`), and requests get DB_UNAVAILABLE
 * meanwhile. Any other failure (bad URL, a migration that fails on a reachable database) stops
 * the start-up. `close()` stops the retries and closes the pool.
 */
export async function openDatabase(
  role: DbRole,
  url: string,
  opts: OpenDatabaseOptions,
): Promise<NodeDatabase> {
  const { log } = opts;
  const retryMs = opts.retryMs ?? DB_RETRY_MS;
  const handle = createDb(url, opts.db);
  let migrated = false;
  let running: Promise<void> | null = null;
  let lastFailure: { at: number; error: unknown } | null = null;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let closed = false;

  const unavailable = (e: unknown) =>
    e instanceof DsmError && e.code === ErrorCode.DB_UNAVAILABLE
      ? e
      : new DsmError(ErrorCode.DB_UNAVAILABLE, 'Database Unavailable', Errno.DB_UNAVAILABLE, { cause: e });

  const attempt = (): Promise<void> => {
    running ??= migrate(handle.db, handle.dialect, role)
      .then(() => {
        migrated = true;
        lastFailure = null;
      })
      .catch((e) => {
        lastFailure = { at: Date.now(), error: e };
        throw isDbUnavailable(e) ? unavailable(e) : e;
      })
      .finally(() => {
        running = null;
      });
    return running;
  };

  const ready = (): Promise<void> => {
    if (migrated) return Promise.resolve();
    if (closed) return Promise.reject(unavailable(new Error('database closed')));
    if (!running && lastFailure && Date.now() - lastFailure.at < retryMs) {
      const e = lastFailure.error;
      return Promise.reject(isDbUnavailable(e) ? unavailable(e) : e);
    }
    return attempt();
  };

  const retryLater = () => {
    timer = setTimeout(() => {
      if (closed || migrated) return;
      ready().then(
        () => log.info({ database: redactUrl(url) }, 'database back; migrated'),
        (e) => {
          if (!isDbUnavailable(e)) log.error({ err: e }, 'database migration failed');
          retryLater();
        },
      );
    }, retryMs);
    timer.unref?.();
  };

  try {
    await attempt();
  } catch (e) {
    if (!isDbUnavailable(e)) {
      await handle.close().catch(() => {});
      throw e;
    }
    log.warn(
      { err: (e instanceof Error ? e.cause : undefined) ?? e, database: redactUrl(url), retryMs },
      'database unavailable at start-up; starting anyway, requests get DB_UNAVAILABLE until it is back',
    );
    retryLater();
  }

  return {
    db: handle.db,
    dialect: handle.dialect,
    url,
    get migrated() {
      return migrated;
    },
    ready,
    close: async () => {
      closed = true;
      clearTimeout(timer);
      await running?.catch(() => {});
      await handle.close();
    },
  };
}
