import { hostname as osHostname } from 'node:os';
import { resolve } from 'node:path';
import { listenAddress, peerAddress, resolveSqliteUrl } from '@dsm/common';
import { HOSTNAME_WIDTH, TOKEN_WIDTH } from '@dsm/packets';
import { nodeAdminShape, nodeSecurityShape } from '@dsm/server';
import { z } from 'zod';

const GiB = 1024 ** 3;
const utf8Length = (s: string) => Buffer.byteLength(s, 'utf8');

/**
 * Storage node configuration. Every key has a default, so an empty file works. Relative paths
 * (store paths, an SQLite database file) resolve against the config file's folder.
 */
export const configSchema = z.object({
  /** Address the storage listens on. */
  listen: listenAddress.default('127.0.0.1:23000'),
  /** Port announced to trackers; 0 = the port actually bound by `listen` (so port 0 works). */
  advertisePort: z.number().int().min(0).max(65535).default(0),
  /** Name in join/heartbeat and in `[hostname]` error prefixes (≤ 128 bytes). */
  hostname: z
    .string()
    .min(1)
    .refine((s) => utf8Length(s) <= HOSTNAME_WIDTH - 1 && !s.includes('\0'), 'at most 128 bytes, no NUL')
    .default(() => osHostname().slice(0, HOSTNAME_WIDTH - 1) || 'localhost'),
  /** Storage group: 1..16 of [A-Za-z0-9]. */
  group: z
    .string()
    .regex(/^[A-Za-z0-9]{1,16}$/, 'group must be 1..16 of [A-Za-z0-9]')
    .default('group001'),
  /**
   * Store folders. Every member of a group uses the same list: the folders are shared (a
   * GlusterFS volume in production), so any member can serve any file of the group.
   */
  storePaths: z.array(z.string().min(1)).min(1).default(['./.dsm/data/group001']),
  /**
   * Whether other storages (the group's other members) write to these store folders. True (the
   * safe default): an upload claims its file id with a lock file in the shared folder. False
   * (one storage per group, folders of its own): the claim is kept in memory.
   */
  storesShared: z.boolean().default(true),
  /** Trackers to join (one link each); empty = standalone. */
  trackers: z.array(peerAddress).default(['127.0.0.1:21000']),
  /** Id servers (tried with failover). */
  idServers: z.array(peerAddress).min(1).default(['127.0.0.1:22000']),
  /**
   * Ids reserved per id-server request (extension 41, see docs/reliability.md); 0 = one request
   * per upload (the seed's way, for an id server without the extension).
   */
  idRangeSize: z.number().int().min(0).max(100_000).default(1000),
  /** `sqlite:<path>` or `mysql://user:pass@host:port/db`. */
  database: z.string().min(1).default('sqlite:./.dsm/storage.db'),
  /** Metadata cache: `memory:` or `redis://host:port/db`. */
  cache: z.string().default('memory:'),
  beatIntervalMs: z.number().int().min(10).default(10_000),
  /** Shared secret sent in the join (≤ 63 bytes; empty = none). */
  joinSecret: z
    .string()
    .refine((s) => utf8Length(s) <= TOKEN_WIDTH - 1 && !s.includes('\0'), 'at most 63 bytes, no NUL')
    .default(''),
  /** Largest upload (content bytes). */
  maxUploadBytes: z
    .number()
    .int()
    .min(0)
    .default(64 * GiB),
  /** Free space an upload must leave on the store folder (errno NO_SPACE otherwise). */
  reserveBytes: z.number().int().min(0).default(0),
  /** Resumable uploads untouched this long are deleted by the sweeper. */
  uploadExpiryMs: z
    .number()
    .int()
    .min(1)
    .default(24 * 3600 * 1000),
  /** TTL of cached file metadata (`storage:meta:<fileid>`); 0 disables the cache. */
  metaCacheTtlMs: z.number().int().min(0).default(60_000),
  /**
   * GlusterFS volume behind the store paths; when set, the pending heals from
   * `gluster volume heal VOL info` (run every `healCheckIntervalMs`) go into the heartbeats.
   */
  glusterVolume: z
    .string()
    .regex(/^[A-Za-z0-9_-]{0,64}$/, 'a GlusterFS volume name (or empty)')
    .default(''),
  healCheckIntervalMs: z.number().int().min(100).default(10_000),
  /**
   * How often the storage writes, fsyncs and removes a probe file in each store; a probe that
   * fails or takes longer than `storeProbeTimeoutMs` marks the store not writable in the
   * heartbeats (trackers hand the storage out last; `dsm status` shows it). 0 = no probe.
   */
  storeProbeIntervalMs: z.number().int().min(0).default(2000),
  storeProbeTimeoutMs: z.number().int().min(10).default(3000),
  /** Read/write chunk size for file I/O. */
  ioChunkBytes: z
    .number()
    .int()
    .min(4096)
    .max(64 * 1024 * 1024)
    .default(512 * 1024),
  /**
   * auth, allowFrom, tls: the same on every node (@dsm/server). The first `auth.keys` entry and
   * `tls.caFile` are also used on this storage's connections to trackers and id servers.
   */
  ...nodeSecurityShape,
  /** admin.listen / admin.vips: `/metrics`, `/healthz`, `/readyz` over HTTP (@dsm/server). */
  ...nodeAdminShape,
});

export type StorageConfigInput = z.input<typeof configSchema>;
/** A parsed config; `configDir` (set by `loadConfig`) anchors relative paths (default: cwd). */
export type StorageConfig = z.infer<typeof configSchema> & { configDir?: string };

/** Parses `host:port` allowing port 0. */
export { parseListen } from '@dsm/common';

/** Store paths as absolute folders (relative ones against `configDir`). */
export function resolveStorePaths(config: StorageConfig): string[] {
  const base = config.configDir ?? process.cwd();
  return config.storePaths.map((p) => resolve(base, p));
}

/** The database URL with a relative SQLite file resolved against `configDir`. */
export function resolveDatabaseUrl(config: StorageConfig): string {
  return resolveSqliteUrl(config.database, config.configDir ?? process.cwd());
}
