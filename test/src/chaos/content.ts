import { createHash } from 'node:crypto';

/**
 * Chaos-run file contents. File number `n` of a run has deterministic bytes: every 4 KiB block
 * starts with the tag `CHAOS#<n, 8 digits>@<block, 5 digits>\n` (21 bytes) and the rest is an
 * xorshift32 stream seeded from the run seed and `n`. So the bytes can be regenerated for the
 * final check instead of kept, and a read that returned another file's bytes (or a block of
 * another file spliced in) names the file it came from.
 */
export const BLOCK = 4096;
const TAG_LENGTH = 21;
const TAG_RE = /^CHAOS#(\d{8})@(\d{5})\n$/;

function tag(n: number, block: number): string {
  return `CHAOS#${String(n).padStart(8, '0')}@${String(block).padStart(5, '0')}\n`;
}

function seedFor(runSeed: number, n: number): number {
  const x = (Math.imul(runSeed ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(n + 1, 0xc2b2ae35)) >>> 0;
  return x || 1;
}

/** The bytes of file `n` (`size` ≥ 21, so the first block always holds a whole tag). */
export function fileBytes(runSeed: number, n: number, size: number): Buffer {
  const b = Buffer.allocUnsafe(size);
  let x = seedFor(runSeed, n);
  for (let off = 0, block = 0; off < size; off += BLOCK, block++) {
    const end = Math.min(off + BLOCK, size);
    const t = tag(n, block);
    const tagEnd = Math.min(off + TAG_LENGTH, end);
    b.write(t.slice(0, tagEnd - off), off, 'latin1');
    for (let i = tagEnd; i < end; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      b[i] = x & 0xff;
    }
  }
  return b;
}

export const sha256Hex = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** Which file numbers the blocks of `b` claim to belong to (tags that do not parse are skipped). */
export function claimedFiles(b: Uint8Array): Set<number> {
  const out = new Set<number>();
  const buf = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  for (let off = 0; off + TAG_LENGTH <= buf.length; off += BLOCK) {
    const m = TAG_RE.exec(buf.toString('latin1', off, off + TAG_LENGTH));
    if (m) out.add(Number(m[1]));
  }
  return out;
}

/**
 * Why `got` is not file `n`'s expected bytes: `foreign` when any block names another file
 * (a read of another file's bytes), `corrupt` when the blocks name this file but differ.
 */
export function classifyMismatch(
  got: Uint8Array,
  n: number,
): { kind: 'foreign' | 'corrupt'; others: number[] } {
  const others = [...claimedFiles(got)].filter((x) => x !== n);
  return others.length > 0 ? { kind: 'foreign', others } : { kind: 'corrupt', others };
}
