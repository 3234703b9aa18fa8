import type { UploadSource } from '@dsm/client';

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;

let shared: Uint8Array | null = null;

/** One 1 MiB block of pseudo-random bytes (xorshift32), made once and reused by every source. */
export function patternBlock(): Uint8Array {
  if (shared) return shared;
  const b = new Uint8Array(MiB);
  let x = 0x9e3779b9;
  for (let i = 0; i < b.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  shared = b;
  return b;
}

/**
 * `size` bytes as chunks of one shared, never-modified 1 MiB block (so a 1 GiB upload holds
 * 1 MiB, not 1 GiB, in memory). The same sequence for every call of `chunks`.
 */
export function* patternChunks(size: number): Generator<Uint8Array> {
  const block = patternBlock();
  let left = size;
  while (left > 0) {
    const n = Math.min(block.length, left);
    yield n === block.length ? block : block.subarray(0, n);
    left -= n;
  }
}

/**
 * An upload source over `patternChunks` (re-openable, as failover requires). `onEnd` is called
 * when the last chunk was taken (the client has handed every byte to its socket by then).
 */
export function patternSource(size: number, onEnd?: () => void): UploadSource {
  return {
    size,
    async *open() {
      yield* patternChunks(size);
      onEnd?.();
    },
  };
}
