import { DsmError, ErrorCode } from '@dsm/common/errors';
import type { KvStore } from '@dsm/kv';

/**
 * A KvStore in the memory of one Worker isolate (the Worker entry's default). No timers (a
 * Worker may not start them outside a request): TTLs are checked on access, and every
 * `SWEEP_EVERY` writes the expired keys are dropped.
 *
 * Good enough for one isolate (tests, `wrangler dev`); NOT for production, where a Worker runs in
 * many isolates at once and any of them may get the next PATCH of an upload: there the tus state
 * and locks need storage every isolate sees — a Durable Object, or a Redis-compatible store
 * reached over the network.
 */
export class IsolateKvStore implements KvStore {
  readonly #map = new Map<string, { value: string; expiresAt: number }>();
  #writes = 0;
  #closed = false;

  static readonly SWEEP_EVERY = 1000;

  get size(): number {
    this.#sweep();
    return this.#map.size;
  }

  #check(): void {
    if (this.#closed) throw new DsmError(ErrorCode.CACHE_UNAVAILABLE, 'isolate KV store is closed');
  }

  #sweep(): void {
    const now = Date.now();
    for (const [k, e] of this.#map) if (e.expiresAt <= now) this.#map.delete(k);
  }

  #wrote(): void {
    if (++this.#writes % IsolateKvStore.SWEEP_EVERY === 0) this.#sweep();
  }

  #live(key: string) {
    const e = this.#map.get(key);
    if (e && e.expiresAt <= Date.now()) {
      this.#map.delete(key);
      return undefined;
    }
    return e;
  }

  async get(key: string): Promise<string | null> {
    this.#check();
    return this.#live(key)?.value ?? null;
  }

  async set(key: string, value: string, ttlMs?: number): Promise<void> {
    this.#check();
    this.#map.set(key, {
      value: String(value),
      expiresAt: ttlMs === undefined ? Number.POSITIVE_INFINITY : Date.now() + ttl(ttlMs),
    });
    this.#wrote();
  }

  async setIfAbsent(key: string, value: string, ttlMs: number): Promise<boolean> {
    this.#check();
    const ms = ttl(ttlMs);
    if (this.#live(key)) return false;
    this.#map.set(key, { value: String(value), expiresAt: Date.now() + ms });
    this.#wrote();
    return true;
  }

  async del(key: string): Promise<void> {
    this.#check();
    this.#map.delete(key);
  }

  async delIfValue(key: string, value: string): Promise<boolean> {
    this.#check();
    const e = this.#live(key);
    if (!e || e.value !== value) return false;
    this.#map.delete(key);
    return true;
  }

  async expire(key: string, ttlMs: number): Promise<boolean> {
    this.#check();
    const ms = ttl(ttlMs);
    const e = this.#live(key);
    if (!e) return false;
    e.expiresAt = Date.now() + ms;
    return true;
  }

  async incrBy(key: string, n: number): Promise<number> {
    this.#check();
    if (!Number.isSafeInteger(n))
      throw new DsmError(ErrorCode.BAD_INPUT, `increment must be an integer, got ${n}`);
    const e = this.#live(key);
    const cur = e ? e.value : '0';
    if (!/^-?\d{1,19}$/.test(cur) || !Number.isSafeInteger(Number(cur))) {
      throw new DsmError(ErrorCode.BAD_INPUT, `value of ${key} is not an integer`);
    }
    const next = Number(cur) + n;
    if (!Number.isSafeInteger(next))
      throw new DsmError(ErrorCode.BAD_INPUT, `incrBy ${key}: result out of range`);
    if (e) e.value = String(next);
    else this.#map.set(key, { value: String(next), expiresAt: Number.POSITIVE_INFINITY });
    this.#wrote();
    return next;
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#map.clear();
  }
}

function ttl(ms: number): number {
  if (typeof ms !== 'number' || !Number.isFinite(ms) || ms <= 0) {
    throw new DsmError(ErrorCode.BAD_INPUT, `TTL must be a positive number of milliseconds, got ${ms}`);
  }
  return Math.ceil(ms);
}
