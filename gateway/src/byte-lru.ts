/**
 * A map bounded by the bytes of its values: the least recently used entries go when a new one
 * would pass `maxBytes`; a value larger than `maxEntryBytes` is not kept at all. The gateway's
 * small-file cache and slice cache (file-cache.ts, slices.ts). Runtime-neutral.
 */
export class ByteLru<V extends { readonly byteLength: number }> {
  readonly maxBytes: number;
  readonly maxEntryBytes: number;
  readonly #m = new Map<string, V>();
  #bytes = 0;

  constructor(maxBytes: number, maxEntryBytes = maxBytes) {
    this.maxBytes = maxBytes;
    this.maxEntryBytes = Math.min(maxEntryBytes, maxBytes);
  }

  /** Bytes of the values held (never above maxBytes). */
  get bytes(): number {
    return this.#bytes;
  }

  get size(): number {
    return this.#m.size;
  }

  /** The value, marked as most recently used. */
  get(key: string): V | undefined {
    const v = this.#m.get(key);
    if (v === undefined) return undefined;
    this.#m.delete(key);
    this.#m.set(key, v);
    return v;
  }

  /** Keeps `value` (evicting the least recently used as needed); false when it is too large. */
  set(key: string, value: V): boolean {
    this.delete(key);
    const n = value.byteLength;
    if (n > this.maxEntryBytes) return false;
    while (this.#bytes + n > this.maxBytes) {
      const oldest = this.#m.keys().next();
      if (oldest.done) break;
      this.delete(oldest.value);
    }
    this.#m.set(key, value);
    this.#bytes += n;
    return true;
  }

  delete(key: string): boolean {
    const v = this.#m.get(key);
    if (v === undefined) return false;
    this.#m.delete(key);
    this.#bytes -= v.byteLength;
    return true;
  }

  /** Drops every key starting with `prefix`. */
  deletePrefix(prefix: string): void {
    for (const k of [...this.#m.keys()]) if (k.startsWith(prefix)) this.delete(k);
  }

  clear(): void {
    this.#m.clear();
    this.#bytes = 0;
  }
}
