import { ErrorCode, isDsmError } from '@dsm/common/errors';
import { type Address, Errno } from '@dsm/packets';
import { isRemoteError } from './connection.ts';

/** Errors after which the same request may go to another server of the same kind. */
export function isRetryable(e: unknown): boolean {
  if (isRemoteError(e)) {
    return isRemoteError(
      e,
      Errno.DB_UNAVAILABLE,
      Errno.IO_ERROR,
      Errno.BUSY,
      Errno.INTERNAL,
      Errno.ID_UNAVAILABLE,
    );
  }
  return isDsmError(e, ErrorCode.CONNECT, ErrorCode.SOCKET, ErrorCode.TIMEOUT, ErrorCode.POOL_FULL);
}

/**
 * Errors after which a tracker request may go to another tracker: the above, and "no storage"
 * (NO_STORAGE), since each tracker knows the storages only from their own heartbeats to it: a
 * tracker that has just restarted has no live storage until they beat again, while the other
 * tracker still knows them all.
 */
export function isRetryableOnTracker(e: unknown): boolean {
  return isRetryable(e) || isRemoteError(e, Errno.NO_STORAGE);
}

/** Random start index from a real random source (the seed reseeded its PRNG every second). */
export function randomStart(n: number): number {
  if (n <= 1) return 0;
  const a = new Uint32Array(1);
  crypto.getRandomValues(a);
  return (a[0] as number) % n;
}

/**
 * Tries `fn` on each address in turn (starting at `start`) while the failure is retryable;
 * rejects with the last error. The first attempt starts at once (no await before it): a
 * request on a kept connection goes out in the caller's turn.
 */
export function tryEach<T>(
  addrs: readonly Address[],
  fn: (a: Address) => Promise<T>,
  start = 0,
  retryable: (e: unknown) => boolean = isRetryable,
): Promise<T> {
  // made only when there is nothing to try: an Error captures a stack, on every request
  if (addrs.length === 0) return Promise.reject(new Error('no addresses to try'));
  const attempt = (i: number): Promise<T> => {
    const p = started(fn, addrs[(start + i) % addrs.length] as Address);
    if (i + 1 >= addrs.length) return p;
    return p.catch((e: unknown) => {
      if (!retryable(e)) throw e;
      return attempt(i + 1);
    });
  };
  return attempt(0);
}

/** `fn(arg)`, a synchronous throw turned into a rejection (as an async function's). */
export function started<A, T>(fn: (arg: A) => Promise<T>, arg: A): Promise<T> {
  try {
    return fn(arg);
  } catch (e) {
    return Promise.reject(e);
  }
}
