import { FILEID_WIDTH, toHex } from '@dsm/packets';

let counter = 0;

/**
 * CSPRNG bytes taken 9 at a time from a pool filled 4 KiB at once: one getRandomValues call per
 * 455 ids instead of one per id (each call cost a gateway about 3% of a small upload's CPU).
 * Every id still gets bytes no other id got.
 */
const POOL_BYTES = 4095;
const pool = new Uint8Array(POOL_BYTES);
let poolAt = POOL_BYTES;

function randomBytes9(): Uint8Array {
  if (poolAt + 9 > POOL_BYTES) {
    crypto.getRandomValues(pool);
    poolAt = 0;
  }
  const r = pool.subarray(poolAt, poolAt + 9);
  poolAt += 9;
  return r;
}

/**
 * A new protocol file id in the seed's 36-character shape: Unix seconds (8 hex) + microseconds
 * (6 hex) + 16 hex chars + a per-process counter 0001..8000 (4 digits) + 2 digits. The seed took
 * the 16 chars from an MD5 of user/pid/thread/rand() with rand() reseeded every second; here
 * they are 64 bits from the platform's CSPRNG, so two clients in one second never collide in
 * practice.
 */
export function newFileId(nowMs = Date.now()): string {
  const secs = Math.floor(nowMs / 1000);
  const micros = (nowMs % 1000) * 1000 + Math.floor(Math.random() * 1000);
  const rnd = randomBytes9();
  counter = (counter % 8000) + 1;
  const id =
    secs.toString(16).padStart(8, '0') +
    micros.toString(16).padStart(6, '0') +
    toHex(rnd.subarray(0, 8)) +
    String(counter).padStart(4, '0') +
    String((rnd[8] as number) % 100).padStart(2, '0');
  return id;
}

/** File ids a storage accepts: printable ASCII without path separators, 1..127 bytes. */
export const FILE_ID_PATTERN = /^[A-Za-z0-9._~-]+$/;

export function isValidFileId(id: string): boolean {
  return id.length > 0 && id.length < FILEID_WIDTH && FILE_ID_PATTERN.test(id) && id !== '.' && id !== '..';
}
