import { Errno } from '@dsm/packets';

/**
 * Base of every dsm error: a stable `code` (DSM_ERR_…) for programs, an `errno` for the wire,
 * and a message for people. One place per edge maps these: the protocol server to error
 * replies, the gateway to problem+json.
 */
export class DsmError extends Error {
  readonly code: DsmErrorCode;
  readonly errno: number;
  constructor(
    code: DsmErrorCode,
    message: string,
    errno: number = Errno.GENERIC,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'DsmError';
    this.code = code;
    this.errno = errno;
  }
}

export const ErrorCode = {
  CONFIG: 'DSM_ERR_CONFIG',
  NOT_FOUND: 'DSM_ERR_NOT_FOUND',
  DB_UNAVAILABLE: 'DSM_ERR_DB_UNAVAILABLE',
  CACHE_UNAVAILABLE: 'DSM_ERR_CACHE_UNAVAILABLE',
  IO: 'DSM_ERR_IO',
  RANGE: 'DSM_ERR_RANGE',
  EXISTS: 'DSM_ERR_EXISTS',
  OFFSET_MISMATCH: 'DSM_ERR_OFFSET_MISMATCH',
  UNAUTHORIZED: 'DSM_ERR_UNAUTHORIZED',
  NO_STORAGE: 'DSM_ERR_NO_STORAGE',
  UNKNOWN_APP: 'DSM_ERR_UNKNOWN_APP',
  BAD_INPUT: 'DSM_ERR_BAD_INPUT',
  TOO_LARGE: 'DSM_ERR_TOO_LARGE',
  ID_UNAVAILABLE: 'DSM_ERR_ID_UNAVAILABLE',
  TIMEOUT: 'DSM_ERR_TIMEOUT',
  CONNECT: 'DSM_ERR_CONNECT',
  SOCKET: 'DSM_ERR_SOCKET',
  POOL_FULL: 'DSM_ERR_POOL_FULL',
  REMOTE: 'DSM_ERR_REMOTE',
  NOT_JOINED: 'DSM_ERR_NOT_JOINED',
  PROTOCOL: 'DSM_ERR_PROTOCOL',
  NO_SPACE: 'DSM_ERR_NO_SPACE',
} as const;

/**
 * Codes only the HTTP gateway raises, for conditions that exist only at the HTTP edge (the
 * gateway's problem.ts maps them to statuses). They live here, next to `ErrorCode`, so that
 * `DsmError.code` is one closed union that admits both tables. Stable like every `DSM_ERR_…`.
 */
export const GatewayErrorCode = {
  FORBIDDEN: 'DSM_ERR_FORBIDDEN',
  NO_ROUTE: 'DSM_ERR_NO_ROUTE',
  LENGTH_REQUIRED: 'DSM_ERR_LENGTH_REQUIRED',
  UNSUPPORTED_MEDIA_TYPE: 'DSM_ERR_UNSUPPORTED_MEDIA_TYPE',
  PRECONDITION_FAILED: 'DSM_ERR_PRECONDITION_FAILED',
  TUS_VERSION: 'DSM_ERR_TUS_VERSION',
  LOCKED: 'DSM_ERR_LOCKED',
  GONE: 'DSM_ERR_GONE',
  CHECKSUM_MISMATCH: 'DSM_ERR_CHECKSUM_MISMATCH',
  BODY_INCOMPLETE: 'DSM_ERR_BODY_INCOMPLETE',
  NOT_READY: 'DSM_ERR_NOT_READY',
  INTERNAL: 'DSM_ERR_INTERNAL',
  /** A concurrency cap (uploads, downloads or connections per client address): 429. */
  TOO_MANY_REQUESTS: 'DSM_ERR_TOO_MANY_REQUESTS',
  /**
   * A node refused the gateway's own connection (no cluster key, a wrong one, or an address
   * outside its allowFrom): the gateway is misconfigured, the end user did nothing wrong: 503.
   */
  CLUSTER_AUTH: 'DSM_ERR_CLUSTER_AUTH',
} as const;

/** A code of the cluster and the client library (`ErrorCode`). */
export type ErrorCodeValue = (typeof ErrorCode)[keyof typeof ErrorCode];
/** A code only the gateway raises (`GatewayErrorCode`). */
export type GatewayErrorCodeValue = (typeof GatewayErrorCode)[keyof typeof GatewayErrorCode];
/** Every stable code a DsmError can carry: a typo in a `throw` or a comparison does not compile. */
export type DsmErrorCode = ErrorCodeValue | GatewayErrorCodeValue;

/**
 * Says what a `catch` expects (instead of a cast): true for a DsmError (subclasses
 * included), and with codes only when its code is one of them; narrows `code` to those.
 */
export function isDsmError<C extends DsmErrorCode = DsmErrorCode>(
  e: unknown,
  ...codes: C[]
): e is DsmError & { readonly code: C } {
  return e instanceof DsmError && (codes.length === 0 || (codes as DsmErrorCode[]).includes(e.code));
}

/**
 * The string `code` of whatever was thrown (Node's system errors: `ENOENT`; drivers:
 * `ER_DUP_ENTRY`, `SQLITE_BUSY`; DsmErrors: `DSM_ERR_…`), or undefined when it has none.
 */
export function errorCodeOf(e: unknown): string | undefined {
  if (typeof e !== 'object' || e === null || !('code' in e)) return undefined;
  return typeof e.code === 'string' ? e.code : undefined;
}

/** The message of whatever was thrown, for logs and wrapped errors (`String(e)` for a non-Error). */
export function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Maps a wire errno back to a stable code (clients turn error replies into DsmErrors). */
export function codeForErrno(errno: number): ErrorCodeValue {
  switch (errno) {
    case Errno.NOT_FOUND:
      return ErrorCode.NOT_FOUND;
    case Errno.DB_UNAVAILABLE:
      return ErrorCode.DB_UNAVAILABLE;
    case Errno.IO_ERROR:
      return ErrorCode.IO;
    case Errno.RANGE:
      return ErrorCode.RANGE;
    case Errno.OFFSET_MISMATCH:
      return ErrorCode.OFFSET_MISMATCH;
    case Errno.EXISTS:
      return ErrorCode.EXISTS;
    case Errno.UNAUTHORIZED:
      return ErrorCode.UNAUTHORIZED;
    case Errno.NO_STORAGE:
      return ErrorCode.NO_STORAGE;
    case Errno.UNKNOWN_APP:
      return ErrorCode.UNKNOWN_APP;
    case Errno.TOO_LARGE:
      return ErrorCode.TOO_LARGE;
    case Errno.ID_UNAVAILABLE:
      return ErrorCode.ID_UNAVAILABLE;
    case Errno.NOT_JOINED:
      return ErrorCode.NOT_JOINED;
    case Errno.NO_SPACE:
      return ErrorCode.NO_SPACE;
    case Errno.BAD_FIELD:
    case Errno.BAD_LENGTH:
    case Errno.UNKNOWN_COMMAND:
      return ErrorCode.BAD_INPUT;
    default:
      return ErrorCode.REMOTE;
  }
}

/** Errno for an error thrown inside a handler: DsmErrors and ProtocolErrors carry their own. */
export function errnoOf(e: unknown): number {
  if (e && typeof e === 'object' && 'errno' in e && typeof e.errno === 'number') {
    const n = e.errno;
    // Node's system errors also have a (negative) errno; those are I/O failures.
    if ('syscall' in e) return Errno.IO_ERROR;
    return n;
  }
  return Errno.INTERNAL;
}
