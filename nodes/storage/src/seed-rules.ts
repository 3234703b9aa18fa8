import type { FileTableName } from '@dsm/db';

/**
 * The seed's table-sharding hash over the raw user id bytes (the seed's exact rule). Each byte
 * is a *signed* char sign-extended to 32 bits (bytes ≥ 0x80 become 0xFFFFFF00 | byte); all
 * arithmetic mod 2^32 with logical shifts:
 *   even i: h ^= (h << 7) ^ c ^ (h >>> 3)
 *   odd i:  h ^= ~((h << 11) ^ c ^ (h >>> 5))
 */
export function seedUserHash(userId: Uint8Array): number {
  let h = 0;
  for (let i = 0; i < userId.length; i++) {
    const c = ((userId[i] as number) << 24) >> 24; // signed char, sign-extended
    if (i % 2 === 0) h = (h ^ ((h << 7) ^ c ^ (h >>> 3))) >>> 0;
    else h = (h ^ ~((h << 11) ^ c ^ (h >>> 5))) >>> 0;
  }
  return h >>> 0;
}

/** `t_file_01`..`t_file_03`: ((h & 0x7FFFFFFF) mod 3) + 1. */
export function fileTableFor(userId: Uint8Array | string): FileTableName {
  const bytes = typeof userId === 'string' ? new TextEncoder().encode(userId) : userId;
  const n = ((seedUserHash(bytes) & 0x7fffffff) % 3) + 1;
  return `t_file_0${n}` as FileTableName;
}

const DIGIT = 512;
const hex3 = (n: number) => n.toString(16).toUpperCase().padStart(3, '0');

/**
 * Relative file path for an id (the seed's layout): the id in base 512, every digit as 3
 * uppercase hex characters, `<d1>/<d2>/<d3>/<T>_<d4>` with T the Unix seconds in uppercase hex.
 * Unlike the seed (quirk 13) digits above the fourth are not dropped: the first level just gets
 * wider (id 512^4 → `200/000/000/<T>_000`), so distinct ids never share a path.
 */
export function relativePathForId(id: number, unixSeconds: number): string {
  if (!Number.isSafeInteger(id) || id < 0) throw new RangeError(`invalid id: ${id}`);
  const d4 = id % DIGIT;
  const d3 = Math.floor(id / DIGIT) % DIGIT;
  const d2 = Math.floor(id / DIGIT ** 2) % DIGIT;
  const d1 = Math.floor(id / DIGIT ** 3); // not reduced: quirk 13
  const t = Math.floor(unixSeconds).toString(16).toUpperCase();
  return `${hex3(d1)}/${hex3(d2)}/${hex3(d3)}/${t}_${hex3(d4)}`;
}

/** `<store>/<relative path>`; no extra `/` when the store path already ends with one. */
export function pathForId(storePath: string, id: number, unixSeconds: number): string {
  const sep = storePath.endsWith('/') ? '' : '/';
  return `${storePath}${sep}${relativePathForId(id, unixSeconds)}`;
}

/**
 * Id-server key of a store folder: `<group>:<index in storePaths>`. Members of a group share the
 * folders and therefore the counter; different groups never collide (the seed used the literal
 * path string, so `../data` on two groups shared one counter).
 */
export function idKeyFor(group: string, storeIndex: number): string {
  return `${group}:${storeIndex}`;
}
