import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { DsmError, ErrorCode } from '@dsm/common';
import Database from 'better-sqlite3';
import { Kysely, MysqlDialect, SqliteDialect } from 'kysely';
import { createPool, type PoolOptions, type TypeCast } from 'mysql2';
import { createConnection } from 'mysql2/promise';
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
  /** MySQL connect timeout in ms (default 5000). */
  connectTimeoutMs?: number;
}

export const SQLITE_BUSY_TIMEOUT_MS = 10_000;

export interface MysqlUrlParts {
  host: string;
  port: number;
  user: string;
  password: string;
  database: string;
}

export type ParsedDbUrl = { dialect: 'sqlite'; path: string } | ({ dialect: 'mysql' } & MysqlUrlParts);

function configError(url: string, why: string): DsmError {
  return new DsmError(
    ErrorCode.CONFIG,
    `bad database URL "${redact(url)}": ${why} (expected sqlite:<path>, sqlite::memory: or mysql://user:pass@host:port/dbname)`,
  );
}

/** The URL with its password replaced by `***`, for messages and logs. */
export function redact(url: string): string {
  return url.replace(/^(mysql:\/\/[^:/@]*:)[^@]*@/i, '$1***@');
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
    return {
      dialect: 'mysql',
      host: p.hostname.replace(/^\[(.*)\]$/, '$1'),
      port,
      user,
      password: decodeURIComponent(p.password),
      database,
    };
  }
  throw configError(u, 'unknown scheme');
}

function openSqlite(path: string): Database.Database {
  try {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
    const sqlite = new Database(path);
    // busy_timeout first: switching to WAL needs a lock another process may hold.
    sqlite.pragma(`busy_timeout = ${SQLITE_BUSY_TIMEOUT_MS}`);
    if (path !== ':memory:') sqlite.pragma('journal_mode = WAL');
    sqlite.pragma('foreign_keys = ON');
    sqlite.pragma('synchronous = NORMAL');
    return sqlite;
  } catch (e) {
    throw new DsmError(
      ErrorCode.CONFIG,
      `cannot open SQLite database ${path}: ${(e as Error).message}`,
      undefined,
      {
        cause: e,
      },
    );
  }
}

/** BIGINT (and COUNT(*) etc.) as JS numbers rather than strings. */
const bigintAsNumber: TypeCast = (field, next) => {
  if (field.type === 'LONGLONG') {
    const s = field.string();
    return s === null ? null : Number(s);
  }
  return next();
};

/** Creates the database (utf8mb4) if it does not exist, on a short-lived connection. */
async function ensureMysqlDatabase(p: MysqlUrlParts, connectTimeout: number): Promise<void> {
  const conn = await createConnection({
    host: p.host,
    port: p.port,
    user: p.user,
    password: p.password,
    connectTimeout,
  });
  try {
    await conn.query(
      `CREATE DATABASE IF NOT EXISTS \`${p.database}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin`,
    );
  } finally {
    await conn.end().catch(() => conn.destroy());
  }
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
  const closedError = () => new Error(`database handle is closed (${redact(url)})`);
  if (parsed.dialect === 'sqlite') {
    const sqlite = openSqlite(parsed.path);
    const db = new Kysely<Schema>({
      dialect: new SqliteDialect({
        database: async () => {
          if (closed) throw closedError();
          return sqlite;
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
  const connectTimeout = opts.connectTimeoutMs ?? 5000;
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
        await ensureMysqlDatabase(parsed, connectTimeout);
        return createPool(poolOptions);
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
