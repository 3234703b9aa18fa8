import { ErrorCode } from '@dsm/common/errors';
import { type Address, Errno } from '@dsm/packets';

/** Errors after which the same request may go to another server of the same kind. */
export function isRetryable(e: unknown): boolean {
  const err = e as { code?: string; errno?: number; remote?: boolean };
  if (err?.remote) {
    return (
      err.errno === Errno.DB_UNAVAILABLE ||
      err.errno === Errno.IO_ERROR ||
      err.errno === Errno.BUSY ||
      err.errno === Errno.INTERNAL ||
      err.errno === Errno.ID_UNAVAILABLE
    );
  }
  return (
    err?.code === ErrorCode.CONNECT ||
    err?.code === ErrorCode.SOCKET ||
    err?.code === ErrorCode.TIMEOUT ||
    err?.code === ErrorCode.POOL_FULL
  );
}

/**
 * Errors after which a tracker request may go to another tracker: the above, and "no storage"
 * (NO_STORAGE), since each tracker knows the storages only from their own heartbeats to it: a
 * tracker that has just restarted has no live storage until they beat again, while the other
 * tracker still knows them all.
 */
export function isRetryableOnTracker(e: unknown): boolean {
  const err = e as { errno?: number; remote?: boolean };
  return isRetryable(e) || (err?.remote === true && err.errno === Errno.NO_STORAGE);
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
 * throws the last error.
 */
export async function tryEach<T>(
  addrs: readonly Address[],
  fn: (a: Address) => Promise<T>,
  start = 0,
  retryable: (e: unknown) => boolean = isRetryable,
): Promise<T> {
  let last: unknown = new Error('no addresses to try');
  for (let i = 0; i < addrs.length; i++) {
    const a = addrs[(start + i) % addrs.length] as Address;
    try {
      return await fn(a);
    } catch (e) {
      last = e;
      if (!retryable(e)) throw e;
    }
  }
  throw last;
}
