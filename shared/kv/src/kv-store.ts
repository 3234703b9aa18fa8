import { DsmError, ErrorCode } from '@dsm/common/errors';

/**
 * A small key/value store with millisecond TTLs (Redis semantics). Values are strings.
 * `ttlMs`, where given, must be a positive number (fractions round up); a key without a TTL
 * lives until deleted. Implementations: MemoryKvStore (in-process) and RedisKvStore.
 * When the backend is unreachable, calls reject with DsmError(ErrorCode.CACHE_UNAVAILABLE).
 */
export interface KvStore {
  /** The value, or null when missing or expired. */
  get(key: string): Promise<string | null>;
  /** Sets the value; without `ttlMs` any previous TTL is removed (like Redis SET). */
  set(key: string, value: string, ttlMs?: number): Promise<void>;
  /** Sets only if the key does not exist (or has expired); true when this call set it. */
  setIfAbsent(key: string, value: string, ttlMs: number): Promise<boolean>;
  del(key: string): Promise<void>;
  /** Atomic compare-and-delete (lock release): deletes only if the value equals `value`. */
  delIfValue(key: string, value: string): Promise<boolean>;
  /** Sets a new TTL on an existing key; false when the key does not exist. */
  expire(key: string, ttlMs: number): Promise<boolean>;
  /**
   * Adds `n` (an integer) to an integer value (a missing key counts as 0) and returns the new
   * value; keeps the key's TTL. Rejects with DsmError(BAD_INPUT) when the value is not an integer.
   */
  incrBy(key: string, n: number): Promise<number>;
  /** Releases connections / timers. Later calls reject with CACHE_UNAVAILABLE. Idempotent. */
  close(): Promise<void>;
}

/** Validates a TTL and returns it as whole milliseconds (>= 1). */
export function ttlToMs(ttlMs: number): number {
  if (typeof ttlMs !== 'number' || !Number.isFinite(ttlMs) || ttlMs <= 0) {
    throw new DsmError(ErrorCode.BAD_INPUT, `TTL must be a positive number of milliseconds, got ${ttlMs}`);
  }
  return Math.ceil(ttlMs);
}

export function checkIncrement(n: number): void {
  if (!Number.isSafeInteger(n))
    throw new DsmError(ErrorCode.BAD_INPUT, `increment must be an integer, got ${n}`);
}
