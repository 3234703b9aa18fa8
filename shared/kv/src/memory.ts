import { DsmError, ErrorCode } from '@dsm/common/errors';
import { checkIncrement, type KvStore, ttlToMs } from './kv-store.ts';

interface Entry {
  value: string;
  /** Date.now() deadline, or Infinity. */
  expiresAt: number;
}

export interface MemoryKvStoreOptions {
  /**
   * How often expired keys are swept (default 1000 ms). 0: no timer (a Cloudflare Worker may not
   * start one outside a request); expired keys are then dropped every `SWEEP_EVERY` writes.
   * Expiry is also checked on every read.
   */
  sweepIntervalMs?: number;
  /**
   * Most live keys (default: no bound). A write of a new key past it is refused with
   * CACHE_UNAVAILABLE (after expired keys are dropped): refusing is safe for every user of the
   * store (a lock or an upload state evicted by an LRU would be lost silently).
   */
  maxKeys?: number;
}

/**
 * In-process KvStore (embedded mode, tests, one Worker isolate). TTLs are honoured on access,
 * by a periodic sweep and every `SWEEP_EVERY` writes. Runtime-neutral (`@dsm/kv/memory`).
 */
export class MemoryKvStore implements KvStore {
  readonly #map = new Map<string, Entry>();
  readonly #timer: ReturnType<typeof setInterval> | undefined;
  readonly #maxKeys: number;
  #writes = 0;
  #closed = false;

  static readonly SWEEP_EVERY = 1000;

  constructor(opts: MemoryKvStoreOptions = {}) {
    const every = opts.sweepIntervalMs ?? 1000;
    this.#maxKeys = opts.maxKeys ?? Number.POSITIVE_INFINITY;
    if (every > 0) {
      this.#timer = setInterval(() => this.#sweep(), every);
      (this.#timer as { unref?: () => void }).unref?.();
    }
  }

  #wrote(): void {
    if (++this.#writes % MemoryKvStore.SWEEP_EVERY === 0) this.#sweep();
  }

  /** Number of live keys (for tests and metrics). */
  get size(): number {
    this.#sweep();
    return this.#map.size;
  }

  #sweep(): void {
    const now = Date.now();
    for (const [k, e] of this.#map) if (e.expiresAt <= now) this.#map.delete(k);
  }

  #check(): void {
    if (this.#closed) throw new DsmError(ErrorCode.CACHE_UNAVAILABLE, 'memory KV store is closed');
  }

  /** Room for `key`: an existing key always has it; a new one only below `maxKeys`. */
  #admit(key: string): void {
    if (this.#map.size < this.#maxKeys || this.#map.has(key)) return;
    this.#sweep();
    if (this.#map.size >= this.#maxKeys) {
      throw new DsmError(ErrorCode.CACHE_UNAVAILABLE, `memory KV store is full (${this.#maxKeys} keys)`);
    }
  }

  #live(key: string): Entry | undefined {
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
    const expiresAt = ttlMs === undefined ? Number.POSITIVE_INFINITY : Date.now() + ttlToMs(ttlMs);
    this.#admit(key);
    this.#map.set(key, { value: String(value), expiresAt });
    this.#wrote();
  }

  async setIfAbsent(key: string, value: string, ttlMs: number): Promise<boolean> {
    this.#check();
    const ms = ttlToMs(ttlMs);
    if (this.#live(key)) return false;
    this.#admit(key);
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
    const ms = ttlToMs(ttlMs);
    const e = this.#live(key);
    if (!e) return false;
    e.expiresAt = Date.now() + ms;
    return true;
  }

  async incrBy(key: string, n: number): Promise<number> {
    this.#check();
    checkIncrement(n);
    const e = this.#live(key);
    const cur = e ? e.value : '0';
    if (!/^-?\d{1,19}$/.test(cur) || !Number.isSafeInteger(Number(cur))) {
      throw new DsmError(ErrorCode.BAD_INPUT, `value of ${key} is not an integer`);
    }
    const next = Number(cur) + n;
    if (!Number.isSafeInteger(next))
      throw new DsmError(ErrorCode.BAD_INPUT, `incrBy ${key}: result out of range`);
    if (e) e.value = String(next);
    else {
      this.#admit(key);
      this.#map.set(key, { value: String(next), expiresAt: Number.POSITIVE_INFINITY });
    }
    this.#wrote();
    return next;
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer) clearInterval(this.#timer);
    this.#map.clear();
  }
}
