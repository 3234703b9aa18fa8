import { hostname } from 'node:os';
import { isAbsolute, resolve } from 'node:path';
import { ConfigError } from '@dsm/common';
import { ID_KEY_MAX } from '@dsm/packets';
import { z } from 'zod';

const LISTEN_RE = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/;

/** `host:port` to listen on; port 0 (any free port) is allowed, unlike peer addresses. */
export function parseListen(text: string): { host: string; port: number } {
  const m = LISTEN_RE.exec(text.trim());
  const port = m ? Number(m[3]) : Number.NaN;
  if (!m || !(port >= 0 && port <= 65535)) throw new ConfigError(`not a host:port listen address: "${text}"`);
  return { host: (m[1] ?? m[2]) as string, port };
}

function isListen(text: string): boolean {
  try {
    parseListen(text);
    return true;
  } catch {
    return false;
  }
}

/** Segment size limits: the seed refuses < 10; the top keeps ids far inside the safe range. */
export const MIN_STEP = 10;
export const MAX_STEP = 1_000_000_000;

/**
 * Id server configuration. Every key has a default, so an empty file works.
 * - `listen`: address to listen on (the seed's fixed 127.0.0.1:22000).
 * - `hostname`: shown in error replies as `[hostname] …`.
 * - `database`: `sqlite:<path>` (relative to the config file's folder) or
 *   `mysql://user:pass@host:port/db`.
 * - `step`: ids reserved per database visit (the seed's `idinc_max_step`), ≥ 10.
 * - `maxKeyLength`: longest key in bytes (≤ 64, the wire and column limit).
 */
export const configSchema = z.object({
  listen: z.string().refine(isListen, 'expected host:port').default('127.0.0.1:22000'),
  hostname: z
    .string()
    .min(1)
    .default(() => hostname()),
  database: z.string().min(1).default('sqlite:./.dsm/id.db'),
  step: z.number().int().min(MIN_STEP).max(MAX_STEP).default(100),
  maxKeyLength: z.number().int().min(1).max(ID_KEY_MAX).default(ID_KEY_MAX),
});

export type IdConfig = z.infer<typeof configSchema>;

/** Makes a relative `sqlite:` path absolute against `configDir`; other URLs are returned as they are. */
export function resolveDatabaseUrl(url: string, configDir: string): string {
  const u = url.trim();
  const m = /^sqlite:(.*)$/is.exec(u);
  if (!m) return u;
  const path = m[1] as string;
  if (path === '' || path === ':memory:' || isAbsolute(path)) return u;
  return `sqlite:${resolve(configDir, path)}`;
}
