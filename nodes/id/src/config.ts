import { hostname } from 'node:os';
import { listenAddress, resolveSqliteUrl } from '@dsm/common';
import { ID_KEY_MAX } from '@dsm/packets';
import { nodeAdminShape, nodeSecurityShape } from '@dsm/server';
import { z } from 'zod';

export { parseListen } from '@dsm/common';

/** Segment size limits: the seed refuses < 10; the top keeps ids far inside the safe range. */
export const MIN_STEP = 10;
export const MAX_STEP = 1_000_000_000;

/**
 * The keys our storages ask for: `<group>:<index of the store folder>` (seed-rules.ts idKeyFor;
 * a group is 1-16 of [A-Za-z0-9]).
 */
export const DEFAULT_KEY_PATTERNS = ['[A-Za-z0-9]{1,16}:[0-9]{1,4}'] as const;

function compiles(p: string): boolean {
  try {
    new RegExp(p, 'u');
    return true;
  } catch {
    return false;
  }
}

/**
 * Id server configuration. Every key has a default, so an empty file works.
 * - `listen`: address to listen on (the seed's fixed 127.0.0.1:22000).
 * - `hostname`: shown in error replies as `[hostname] …`.
 * - `database`: `sqlite:<path>` (relative to the config file's folder) or
 *   `mysql://user:pass@host:port/db`.
 * - `step`: ids reserved per database visit (the seed's `idinc_max_step`), ≥ 10.
 * - `maxKeyLength`: longest key in bytes (≤ 64, the wire and column limit).
 * - `keyPatterns`: regular expressions a key must match as a whole to be served (others get
 *   errno BAD_FIELD "ID Key Not Served"): every new key is a database row that lives for ever,
 *   so only the keys storages use are served. Default: the storages' `<group>:<store index>`.
 */
export const configSchema = z.object({
  listen: listenAddress.default('127.0.0.1:22000'),
  hostname: z
    .string()
    .min(1)
    .default(() => hostname()),
  database: z.string().min(1).default('sqlite:./.dsm/id.db'),
  step: z.number().int().min(MIN_STEP).max(MAX_STEP).default(100),
  maxKeyLength: z.number().int().min(1).max(ID_KEY_MAX).default(ID_KEY_MAX),
  keyPatterns: z
    .array(z.string().min(1).refine(compiles, 'not a valid regular expression'))
    .min(1)
    .default([...DEFAULT_KEY_PATTERNS]),
  /** auth, allowFrom, tls: the same on every node (@dsm/server). */
  ...nodeSecurityShape,
  /** admin.listen / admin.vips: `/metrics`, `/healthz`, `/readyz` over HTTP (@dsm/server). */
  ...nodeAdminShape,
});

export type IdConfig = z.infer<typeof configSchema> & { configDir?: string };
export type IdConfigInput = z.input<typeof configSchema>;

/** A function telling whether `key` matches one of `patterns` as a whole. */
export function keyMatcher(patterns: readonly string[]): (key: string) => boolean {
  const res = patterns.map((p) => new RegExp(`^(?:${p})$`, 'u'));
  return (key) => res.some((r) => r.test(key));
}

/** Makes a relative `sqlite:` path absolute against `configDir`. */
export const resolveDatabaseUrl = resolveSqliteUrl;
