/**
 * A Map with a size bound: the least recently used entry goes when a new one would pass `max`.
 * Runtime-neutral (the Worker gateway uses it too). Every map filled from network input uses
 * this or another bound, so a flood of distinct keys costs a fixed amount of memory.
 */
export class LruMap<K, V> {
  readonly max: number;
  readonly #m = new Map<K, V>();
  /** The most recently used key (get need not move it). */
  #newest: K | undefined;

  constructor(max: number) {
    if (!Number.isSafeInteger(max) || max < 1) throw new RangeError(`LruMap bound must be >= 1, got ${max}`);
    this.max = max;
  }

  get size(): number {
    return this.#m.size;
  }

  has(key: K): boolean {
    return this.#m.has(key);
  }

  /** The value, marked as most recently used. */
  get(key: K): V | undefined {
    const v = this.#m.get(key) as V;
    if (v === undefined && !this.#m.has(key)) return undefined; // one lookup for a hit
    if (key !== this.#newest) {
      this.#m.delete(key);
      this.#m.set(key, v);
      this.#newest = key;
    }
    return v;
  }

  /** Sets the value (most recently used); evicts the least recently used past `max`. */
  set(key: K, value: V): this {
    this.#m.delete(key);
    this.#m.set(key, value);
    this.#newest = key;
    while (this.#m.size > this.max) {
      const oldest = this.#m.keys().next();
      if (oldest.done) break;
      this.#m.delete(oldest.value);
    }
    return this;
  }

  delete(key: K): boolean {
    if (key === this.#newest) this.#newest = undefined;
    return this.#m.delete(key);
  }

  clear(): void {
    this.#newest = undefined;
    this.#m.clear();
  }

  keys(): IterableIterator<K> {
    return this.#m.keys();
  }
}
