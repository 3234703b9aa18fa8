import { hostname as osHostname } from 'node:os';
import { listenAddress } from '@dsm/common';
import { GROUPNAME_WIDTH, TOKEN_WIDTH } from '@dsm/packets';
import { isIpOrCidr, nodeAdminShape, nodeSecurityShape } from '@dsm/server';
import { z } from 'zod';

/** `[A-Za-z0-9]`, 1..16 characters (the group name field is 17 bytes with its NUL). */
export const GROUP_NAME_RE = new RegExp(`^[A-Za-z0-9]{1,${GROUPNAME_WIDTH - 1}}$`);
/** App ids: non-empty alphanumeric, at most 15 characters (16-byte field with its NUL). */
export const APP_ID_RE = /^[A-Za-z0-9]{1,15}$/;

export { parseListen } from '@dsm/common';

export { isIpOrCidr };

export const configSchema = z.object({
  /** Address to listen on. */
  listen: listenAddress.default('127.0.0.1:21000'),
  /** Name in error replies (`[hostname] message`) and in the status reply. */
  hostname: z
    .string()
    .min(1)
    .default(() => osHostname()),
  /** `sqlite:<path>` (relative to the config file's folder) or `mysql://user:pass@host:port/db`. */
  database: z.string().min(1).default('sqlite:./.dsm/tracker.db'),
  /** Route cache: `memory:` or `redis://host:port/db`. */
  cache: z.string().default('memory:'),
  /** App ids accepted in address-list requests (the seed's `tnv_apps_id`). */
  appIds: z.array(z.string().regex(APP_ID_RE, 'app ids are 1-15 of [A-Za-z0-9]')).min(1).default(['tnvideo']),
  /** Groups this tracker serves; empty = any. Joins for other groups are refused. */
  groups: z.array(z.string().regex(GROUP_NAME_RE, 'group names are 1-16 of [A-Za-z0-9]')).default([]),
  /** A storage with no beat for this long is OFFLINE (3 × the storage's 10 s beat). */
  beatTimeoutMs: z.number().int().positive().default(30_000),
  /** How often the sweep runs. */
  sweepIntervalMs: z.number().int().positive().default(1000),
  /** TTL of cached user → group routes. */
  routeCacheTtlMs: z.number().int().positive().default(60_000),
  /** Most addresses in one address-list reply. */
  maxAddrs: z.number().int().min(1).max(64).default(3),
  /** When set, extension joins must carry it and seed joins (10) are refused. */
  joinSecret: z
    .string()
    .refine((s) => Buffer.byteLength(s) <= TOKEN_WIDTH - 1 && !s.includes('\0'), 'at most 63 bytes, no NUL')
    .default(''),
  /** auth, allowFrom (every connection, not only joins), tls: the same on every node (@dsm/server). */
  ...nodeSecurityShape,
  /** admin.listen: `/metrics`, `/healthz`, `/readyz` over HTTP (@dsm/server, docs/operations.md). */
  ...nodeAdminShape,
});

export type TrackerConfig = z.infer<typeof configSchema> & { configDir?: string };
export type TrackerConfigInput = z.input<typeof configSchema>;
