import { Errno } from '@dsm/packets';

/**
 * Base of every dsm error: a stable `code` (DSM_ERR_…) for programs, an `errno` for the wire,
 * and a message for people. One place per edge maps these: the protocol server to error
 * replies, the gateway to problem+json.
 */
export class DsmError extends Error {
  readonly code: string;
  readonly errno: number;
  constructor(code: string, message: string, errno: number = Errno.GENERIC, options?: { cause?: unknown }) {
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

/** Maps a wire errno back to a stable code (clients turn error replies into DsmErrors). */
export function codeForErrno(errno: number): string {
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
  if (e && typeof e === 'object' && 'errno' in e && typeof (e as { errno: unknown }).errno === 'number') {
    const n = (e as { errno: number }).errno;
    // Node's system errors also have a (negative) errno; those are I/O failures.
    if ('syscall' in e) return Errno.IO_ERROR;
    return n;
  }
  return Errno.INTERNAL;
}
