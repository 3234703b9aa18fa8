/** The frames captured from the seed (shared/packets/fixtures/seed-vectors.json, see seed-vectors.md there). */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fromHex } from '@dsm/packets';

export interface SeedVector {
  name: string;
  producer: string;
  direction: 'request' | 'reply';
  command: number;
  status: number;
  frame_hex: string;
  declared_body_len: number;
  /** Frames with the same number went over one connection. */
  connection: number;
  server: 'tracker' | 'id' | 'storage';
  fields: Record<string, unknown>;
  notes?: string;
}

/** The vectors file (DSM_SEED_VECTORS overrides it). */
export const SEED_VECTORS_PATH =
  process.env.DSM_SEED_VECTORS ??
  createRequire(import.meta.url).resolve('@dsm/packets/fixtures/seed-vectors.json');

/** Every captured frame, in capture order; throws a clear error when the file is missing. */
export function loadSeedVectors(): SeedVector[] {
  if (!existsSync(SEED_VECTORS_PATH)) {
    throw new Error(`seed vectors not found at ${SEED_VECTORS_PATH} (set DSM_SEED_VECTORS)`);
  }
  return JSON.parse(readFileSync(SEED_VECTORS_PATH, 'utf8')) as SeedVector[];
}

/** The vector's whole frame (header + body) as bytes. */
export const frameOf = (v: SeedVector): Uint8Array => fromHex(v.frame_hex);
