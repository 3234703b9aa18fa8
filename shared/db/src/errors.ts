import { DsmError, ErrorCode } from '@dsm/common';
import { Errno } from '@dsm/packets';

interface ErrLike {
  code?: unknown;
  errno?: unknown;
  message?: unknown;
  cause?: unknown;
  errors?: unknown;
}

/** The error and its causes / aggregated errors (bounded, cycle-safe). */
function chain(e: unknown): ErrLike[] {
  const out: ErrLike[] = [];
  const todo: unknown[] = [e];
  const seen = new Set<unknown>();
  while (todo.length > 0 && out.length < 16) {
    const x = todo.shift();
    if (!x || typeof x !== 'object' || seen.has(x)) continue;
    seen.add(x);
    const el = x as ErrLike;
    out.push(el);
    if (el.cause !== undefined) todo.push(el.cause);
    if (Array.isArray(el.errors)) todo.push(...el.errors);
  }
  return out;
}

const str = (v: unknown): string => (typeof v === 'string' ? v : '');

/** A duplicate primary / unique key: MySQL ER_DUP_ENTRY (1062), SQLite SQLITE_CONSTRAINT_PRIMARYKEY/UNIQUE. */
export function isUniqueViolation(e: unknown): boolean {
  return chain(e).some((x) => {
    const code = str(x.code);
    return (
      code === 'ER_DUP_ENTRY' ||
      (code.startsWith('ER_') && x.errno === 1062) ||
      code === 'SQLITE_CONSTRAINT_PRIMARYKEY' ||
      code === 'SQLITE_CONSTRAINT_UNIQUE'
    );
  });
}

const UNAVAILABLE_CODES = new Set([
  // Node sockets / DNS
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'EHOSTDOWN',
  'ENETUNREACH',
  'ENETDOWN',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ECONNABORTED',
  // mysql2
  'PROTOCOL_CONNECTION_LOST',
  'PROTOCOL_SEQUENCE_TIMEOUT',
  'PROTOCOL_ENQUEUE_AFTER_FATAL_ERROR',
  'PROTOCOL_ENQUEUE_AFTER_QUIT',
  'ER_CON_COUNT_ERROR',
  'ER_TOO_MANY_USER_CONNECTIONS',
  'ER_SERVER_SHUTDOWN',
  'ER_NORMAL_SHUTDOWN',
  'ER_SHUTDOWN_COMPLETE',
  'ER_CONNECTION_KILLED',
  'ER_QUERY_INTERRUPTED',
  'ER_LOCK_WAIT_TIMEOUT',
  'ER_CLIENT_INTERACTION_TIMEOUT',
  // createDb's pool: no connection within acquireTimeoutMs
  'DSM_DB_ACQUIRE_TIMEOUT',
]);

// MySQL server errnos of the codes above, for errors whose `code` was lost.
const UNAVAILABLE_MYSQL_ERRNOS = new Set([1040, 1053, 1077, 1079, 1203, 1205, 1317, 1927, 4031]);

const UNAVAILABLE_MESSAGES = [
  'pool is closed',
  'driver has already been destroyed',
  'database handle is closed',
  "can't add new command when connection is in closed state",
  'connection lost',
  'the database connection is not open',
  'connect etimedout',
  'query inactivity timeout',
  'timed out waiting for a database connection',
  'timed out waiting for the migration lock',
];

/**
 * The database cannot be reached or is too busy right now (the operation may succeed later):
 * connection refused / lost / timed out, too many connections, server shutting down, pool or
 * driver closed, SQLite busy / locked / cannot open / disk I/O error.
 */
export function isDbUnavailable(e: unknown): boolean {
  return chain(e).some((x) => {
    if (x instanceof DsmError) return x.code === ErrorCode.DB_UNAVAILABLE;
    const code = str(x.code);
    if (UNAVAILABLE_CODES.has(code)) return true;
    if (
      code.startsWith('SQLITE_BUSY') ||
      code.startsWith('SQLITE_LOCKED') ||
      code.startsWith('SQLITE_CANTOPEN') ||
      code.startsWith('SQLITE_IOERR')
    ) {
      return true;
    }
    if (code.startsWith('ER_') && typeof x.errno === 'number' && UNAVAILABLE_MYSQL_ERRNOS.has(x.errno)) {
      return true;
    }
    const msg = str(x.message).toLowerCase();
    return UNAVAILABLE_MESSAGES.some((m) => msg.includes(m));
  });
}

// Lost after the statement may have reached the server (no error reply was read).
const OUTCOME_UNKNOWN_CODES = new Set([
  'PROTOCOL_CONNECTION_LOST',
  'PROTOCOL_SEQUENCE_TIMEOUT',
  'ECONNRESET',
  'EPIPE',
]);

/**
 * The connection was lost, or the answer timed out, after a statement was sent: it may or may
 * not have been applied. (An error reply from the server, or a failure to connect, is not
 * this: the statement was then certainly not applied.) Callers that undo side effects when a
 * write fails should not undo them for such a failure.
 */
export function isOutcomeUnknown(e: unknown): boolean {
  return chain(e).some((x) => {
    if (x instanceof DsmError) return false;
    return OUTCOME_UNKNOWN_CODES.has(str(x.code)) || str(x.message).toLowerCase().includes('connection lost');
  });
}

/**
 * For `catch` blocks around database calls: throws a DsmError(DB_UNAVAILABLE, errno
 * DB_UNAVAILABLE) naming `what` when the database is unavailable; rethrows anything else
 * (DsmErrors, constraint violations, bugs) unchanged.
 *
 *     try { ... } catch (e) { dbError(e, 'reading t_router'); }
 */
export function dbError(e: unknown, what: string): never {
  if (e instanceof DsmError) throw e;
  if (isDbUnavailable(e)) {
    const detail = e instanceof Error ? e.message || str((e as ErrLike).code) : String(e);
    throw new DsmError(
      ErrorCode.DB_UNAVAILABLE,
      `${what}: database unavailable (${detail})`,
      Errno.DB_UNAVAILABLE,
      {
        cause: e,
      },
    );
  }
  throw e;
}
