import { mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, resolve } from 'node:path';
import { DsmError, ErrorCode, messageOf, redactUrl } from '@dsm/common';
import { LruMap } from '@dsm/common/lru';
import type Database from 'better-sqlite3';
import {
  Kysely,
  MysqlDialect,
  type MysqlPool,
  type MysqlPoolConnection,
  type SqliteDatabase,
  SqliteDialect,
  type SqliteStatement,
} from 'kysely';
import type { Pool, PoolConnection, PoolOptions, TypeCast } from 'mysql2';

/**
 * The drivers load on first use: a node on SQLite never loads mysql2 and one on MySQL never loads
 * the native SQLite module (each process is about 15 MiB smaller; docs/performance.md).
 */
const lazy = createRequire(import.meta.url);
const sqliteDriver = () => lazy('better-sqlite3') as typeof import('better-sqlite3');
const mysqlDriver = () => lazy('mysql2') as typeof import('mysql2');
const mysqlPromiseDriver = () => lazy('mysql2/promise') as typeof import('mysql2/promise');

import type { Schema } from './schema.ts';

export type DbDialect = 'sqlite' | 'mysql';

export interface DbHandle {
  db: Kysely<Schema>;
  dialect: DbDialect;
  /** Closes the pool / file. Idempotent. */
  close(): Promise<void>;
}

export interface CreateDbOptions {
  /** MySQL pool size (default 10). */
  connectionLimit?: number;
  /** MySQL connect timeout in ms (default: the URL's `connectTimeoutMs`, else 5000). */
  connectTimeoutMs?: number;
  /**
   * MySQL: longest wait for the answer to a statement (default: the URL's `queryTimeoutMs`,
   * else 10000). A statement that gets no answer in time fails as "database unavailable" and
   * its connection is dropped, so a frozen server or a silent network cannot hang requests.
   * DDL and GET_LOCK (migrations) are not limited.
   */
  queryTimeoutMs?: number;
  /**
   * MySQL: longest wait for a pooled connection (all busy, or a new one connecting); default:
   * the URL's `acquireTimeoutMs`, else the larger of queryTimeoutMs and connectTimeoutMs + 1 s.
   */
  acquireTimeoutMs?: number;
}

export const DEFAULT_CONNECT_TIMEOUT_MS = 5000;
export const DEFAULT_QUERY_TIMEOUT_MS = 10_000;

export const SQLITE_BUSY_TIMEOUT_MS = 10_000;

export interface MysqlUrlParts {
  host: string;
  port: number;
  user: string;
  password: string;
  database: string;
  /** `?connectTimeoutMs=N&queryTimeoutMs=N&acquireTimeoutMs=N` (see CreateDbOptions). */
  connectTimeoutMs?: number;
  queryTimeoutMs?: number;
  acquireTimeoutMs?: number;
}

const URL_TIMEOUTS = ['connectTimeoutMs', 'queryTimeoutMs', 'acquireTimeoutMs'] as const;

export type ParsedDbUrl = { dialect: 'sqlite'; path: string } | ({ dialect: 'mysql' } & MysqlUrlParts);

function configError(url: string, why: string): DsmError {
  return new DsmError(
    ErrorCode.CONFIG,
    `bad database URL "${redactUrl(url)}": ${why} (expected sqlite:<path>, sqlite::memory: or mysql://user:pass@host:port/dbname)`,
  );
}

/**
 * Parses `sqlite:<path>` (relative paths resolve against the current directory),
 * `sqlite::memory:` and `mysql://user:pass@host:port/dbname`. Throws DsmError(CONFIG).
 */
export function parseDbUrl(url: string): ParsedDbUrl {
  if (typeof url !== 'string' || url.trim() === '') throw configError(String(url), 'empty');
  const u = url.trim();
  if (/^sqlite:/i.test(u)) {
    const rest = u.slice('sqlite:'.length);
    if (rest === ':memory:') return { dialect: 'sqlite', path: ':memory:' };
    if (rest === '') throw configError(u, 'no file path after "sqlite:"');
    return { dialect: 'sqlite', path: resolve(rest) };
  }
  if (/^mysql:\/\//i.test(u)) {
    let p: URL;
    try {
      p = new URL(u);
    } catch {
      throw configError(u, 'not a valid URL');
    }
    if (!p.hostname) throw configError(u, 'no host');
    const port = p.port ? Number(p.port) : 3306;
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw configError(u, 'bad port');
    const database = decodeURIComponent(p.pathname.replace(/^\//, ''));
    if (!database) throw configError(u, 'no database name in the path');
    if (!/^[A-Za-z0-9_$]{1,64}$/.test(database)) {
      throw configError(u, `database name "${database}" must be 1-64 of [A-Za-z0-9_$]`);
    }
    const user = decodeURIComponent(p.username);
    if (!user) throw configError(u, 'no user');
    const timeouts: Partial<Record<(typeof URL_TIMEOUTS)[number], number>> = {};
    for (const k of URL_TIMEOUTS) {
      const v = p.searchParams.get(k);
      if (v === null) continue;
      const n = Number(v);
      if (!/^\d+$/.test(v) || n < 1 || n > 3_600_000) {
        throw configError(u, `${k} must be a whole number of milliseconds (1 to 3600000)`);
      }
      timeouts[k] = n;
    }
    return {
      dialect: 'mysql',
      host: p.hostname.replace(/^\[(.*)\]$/, '$1'),
      port,
      user,
      password: decodeURIComponent(p.password),
      database,
      ...timeouts,
    };
  }
  throw configError(u, 'unknown scheme');
}

/**
 * Switches to WAL. Two processes opening one new file at once (the HA lab's two id servers)
 * can meet SQLITE_BUSY here without the busy handler being asked: tried again every 100 ms for
 * the busy timeout (start-up only).
 */
function walMode(sqlite: Database.Database): void {
  for (let waited = 0; ; waited += 100) {
    try {
      sqlite.pragma('journal_mode = WAL');
      return;
    } catch (e) {
      if ((e as { code?: string }).code !== 'SQLITE_BUSY' || waited >= SQLITE_BUSY_TIMEOUT_MS) throw e;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 100);
    }
  }
}

function openSqlite(path: string): Database.Database {
  try {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
    const Sqlite = sqliteDriver();
    const sqlite = new Sqlite(path);
    // busy_timeout first: switching to WAL needs a lock another process may hold.
    sqlite.pragma(`busy_timeout = ${SQLITE_BUSY_TIMEOUT_MS}`);
    if (path !== ':memory:') walMode(sqlite);
    sqlite.pragma('foreign_keys = ON');
    sqlite.pragma('synchronous = NORMAL');
    return sqlite;
  } catch (e) {
    throw new DsmError(ErrorCode.CONFIG, `cannot open SQLite database ${path}: ${messageOf(e)}`, undefined, {
      cause: e,
    });
  }
}

/** Prepared SQLite statements kept per SQL text (a handful of shapes; batch INSERTs vary by rows). */
const SQLITE_STATEMENT_CACHE = 256;

/**
 * The SQLite database as kysely's driver sees it, with its prepared statements reused: kysely
 * prepares every query anew, and preparing costs more than running a small SELECT or INSERT (a
 * small upload's existence check and row). Safe to share: the driver runs one query at a time
 * on its one connection, and a statement keeps nothing between runs.
 */
function reusingStatements(sqlite: Database.Database): SqliteDatabase {
  const cache = new LruMap<string, SqliteStatement>(SQLITE_STATEMENT_CACHE);
  return {
    close: () => sqlite.close(),
    prepare(text: string): SqliteStatement {
      let stmt = cache.get(text);
      if (!stmt) {
        stmt = sqlite.prepare(text) as unknown as SqliteStatement;
        cache.set(text, stmt);
      }
      return stmt;
    },
  };
}

/** BIGINT (and COUNT(*) etc.) as JS numbers rather than strings. */
const bigintAsNumber: TypeCast = (field, next) => {
  if (field.type === 'LONGLONG') {
    const s = field.string();
    return s === null ? null : Number(s);
  }
  return next();
};

/** Statements without a time limit: DDL (migrations of big tables) and GET_LOCK (waits by design). */
const UNLIMITED_SQL = /^\s*(create|alter|drop|rename|truncate)\b|\bget_lock\s*\(/i;

/** The error of a pool that had no connection to give within the acquire timeout. */
export const ACQUIRE_TIMEOUT_CODE = 'DSM_DB_ACQUIRE_TIMEOUT';

/**
 * The mysql2 pool as Kysely sees it, with time limits: waiting for a connection is bounded by
 * `acquireTimeoutMs`, each statement (but DDL and GET_LOCK) by `queryTimeoutMs`. mysql2 leaves
 * a connection whose statement timed out in use (a later statement would queue behind the
 * unanswered one), so such a connection is destroyed: the pool opens a fresh one next time.
 * Without this a server that stops answering (SIGSTOP, a silent network) hangs every request
 * until TCP gives up, minutes later.
 */
function guardPool(pool: Pool, queryTimeoutMs: number, acquireTimeoutMs: number): MysqlPool {
  const wrappers = new WeakMap<PoolConnection, MysqlPoolConnection>();
  const wrap = (conn: PoolConnection): MysqlPoolConnection => {
    let w = wrappers.get(conn);
    if (!w) {
      type Cb = (error: unknown, result: never) => void;
      const query = (sqlText: string, parameters: unknown[], cb?: Cb) => {
        if (!cb)
          return conn.query(sqlText, parameters) as unknown as ReturnType<MysqlPoolConnection['query']>;
        const timeout = UNLIMITED_SQL.test(sqlText) ? undefined : queryTimeoutMs;
        conn.query({ sql: sqlText, timeout }, parameters, (err: unknown, result: unknown) => {
          if ((err as { code?: unknown } | null)?.code === 'PROTOCOL_SEQUENCE_TIMEOUT') conn.destroy();
          cb(err, result as never);
        });
        return undefined;
      };
      w = { query, release: () => conn.release() } as MysqlPoolConnection;
      wrappers.set(conn, w);
    }
    return w;
  };
  return {
    getConnection(callback) {
      let settled = false;
      const timer = setTimeout(() => {
        settled = true;
        const e = Object.assign(
          new Error(`timed out waiting for a database connection (${acquireTimeoutMs} ms)`),
          { code: ACQUIRE_TIMEOUT_CODE },
        );
        callback(e, undefined as unknown as MysqlPoolConnection);
      }, acquireTimeoutMs);
      pool.getConnection((err, conn) => {
        if (settled) {
          // too late: the caller has been answered; hand the connection back
          if (!err) conn.release();
          return;
        }
        settled = true;
        clearTimeout(timer);
        if (err) callback(err, undefined as unknown as MysqlPoolConnection);
        else callback(null, wrap(conn));
      });
    },
    end(callback) {
      pool.end(callback);
    },
  };
}

/** Creates the database (utf8mb4) if it does not exist, on a short-lived connection. */
async function ensureMysqlDatabase(
  p: MysqlUrlParts,
  connectTimeout: number,
  queryTimeoutMs: number,
): Promise<void> {
  const conn = await mysqlPromiseDriver().createConnection({
    host: p.host,
    port: p.port,
    user: p.user,
    password: p.password,
    connectTimeout,
  });
  try {
    await conn.query({
      sql: `CREATE DATABASE IF NOT EXISTS \`${p.database}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin`,
      timeout: queryTimeoutMs,
    });
  } catch (e) {
    // a polite QUIT would queue behind the unanswered statement
    conn.destroy();
    throw e;
  }
  await conn.end().catch(() => conn.destroy());
}

/**
 * Opens a database. Synchronous: SQLite opens the file now; MySQL connects lazily on the first
 * query (which first creates the database `IF NOT EXISTS`), so a node can start while MySQL is
 * down — queries then fail with errors `isDbUnavailable` recognizes — and recovers by itself.
 * Throws DsmError(CONFIG) for a bad URL or an SQLite file that cannot be opened.
 */
export function createDb(url: string, opts: CreateDbOptions = {}): DbHandle {
  const parsed = parseDbUrl(url);
  let closed: Promise<void> | undefined;
  // A handle closed before its first query must not come back to life on a later one.
  const closedError = () => new Error(`database handle is closed (${redactUrl(url)})`);
  if (parsed.dialect === 'sqlite') {
    const sqlite = openSqlite(parsed.path);
    const driverView = reusingStatements(sqlite);
    const db = new Kysely<Schema>({
      dialect: new SqliteDialect({
        database: async () => {
          if (closed) throw closedError();
          return driverView;
        },
      }),
    });
    return {
      db,
      dialect: 'sqlite',
      close: () => {
        closed ??= db.destroy().finally(() => {
          if (sqlite.open) sqlite.close();
        });
        return closed;
      },
    };
  }
  const connectTimeout = opts.connectTimeoutMs ?? parsed.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
  const queryTimeoutMs = opts.queryTimeoutMs ?? parsed.queryTimeoutMs ?? DEFAULT_QUERY_TIMEOUT_MS;
  const acquireTimeoutMs =
    opts.acquireTimeoutMs ?? parsed.acquireTimeoutMs ?? Math.max(queryTimeoutMs, connectTimeout + 1000);
  const connectionLimit = opts.connectionLimit ?? 10;
  if (!Number.isInteger(connectionLimit) || connectionLimit < 1) {
    throw new DsmError(
      ErrorCode.CONFIG,
      `connectionLimit must be a positive integer, got ${connectionLimit}`,
    );
  }
  const poolOptions: PoolOptions = {
    host: parsed.host,
    port: parsed.port,
    user: parsed.user,
    password: parsed.password,
    database: parsed.database,
    charset: 'utf8mb4_bin',
    connectionLimit,
    connectTimeout,
    waitForConnections: true,
    queueLimit: 0,
    enableKeepAlive: true,
    supportBigNumbers: true,
    bigNumberStrings: false,
    typeCast: bigintAsNumber,
  };
  const db = new Kysely<Schema>({
    dialect: new MysqlDialect({
      pool: async () => {
        if (closed) throw closedError();
        await ensureMysqlDatabase(parsed, connectTimeout, queryTimeoutMs);
        return guardPool(mysqlDriver().createPool(poolOptions), queryTimeoutMs, acquireTimeoutMs);
      },
    }),
  });
  return {
    db,
    dialect: 'mysql',
    close: () => {
      closed ??= db.destroy();
      return closed;
    },
  };
}
