import { type ClusterKey, clusterKey } from '@dsm/client';
import { messageOf } from '@dsm/common/errors';
import { type GatewayConfig, parseGatewayConfig } from './config.ts';
import { type EdgeCacheConfig, edgeCacheSchema } from './edge-cache.ts';

// Kept apart from worker.ts (which imports `cloudflare:sockets`) so Node tests can load it.

/**
 * Bindings ([vars] in wrangler.toml; secrets with `wrangler secret put`). Every one is optional:
 * without any, the gateway has the Node entry's defaults.
 */
export interface WorkerEnv {
  /** The gateway config (the keys of gateway.json) as a [vars] table or a JSON string. */
  DSM_GATEWAY?: string | Record<string, unknown>;
  /** `host:port,host:port`: the trackers (overrides `trackers` of DSM_GATEWAY). */
  DSM_TRACKERS?: string;
  /** Base of URLs in replies (overrides `publicUrl`). */
  DSM_PUBLIC_URL?: string;
  /** Secret: legacy single HS256 key for bearer tokens (overrides `auth.hs256Secret`). */
  DSM_AUTH_HS256_SECRET?: string;
  /** Secret: JSON `{"kid": "secret"}` of HS256 token keys (overrides `auth.hs256Keys`). */
  DSM_AUTH_HS256_KEYS?: string;
  /** Secret: bearer token for `/metrics` and the details of `/readyz` (overrides `admin.token`). */
  DSM_ADMIN_TOKEN?: string;
  /** Secret: JSON `{"kid": "secret"}` of URL-signing keys (overrides `downloads.signingKeys`). */
  DSM_SIGNING_KEYS?: string;
  /** Secret: the node-protocol cluster key's secret (its id is `cluster.keyId`). */
  DSM_CLUSTER_KEY?: string;
  /** debug | info | warn (default) | error */
  DSM_LOG_LEVEL?: string;
}

/** The cluster key from the `DSM_CLUSTER_KEY` secret binding; none = the nodes are not asked to authenticate. */
export function clusterKeyFromEnv(config: GatewayConfig, env: WorkerEnv): ClusterKey | undefined {
  return env.DSM_CLUSTER_KEY
    ? clusterKey(config.cluster.keyId, env.DSM_CLUSTER_KEY, 'DSM_CLUSTER_KEY')
    : undefined;
}

/** The first issue of a zod error as `config key "a.b": message`. */
function configKeyError(e: unknown, prefix: PropertyKey[] = []): Error {
  const issues = (e as { issues?: { path: PropertyKey[]; message: string }[] }).issues;
  const first = issues?.[0];
  return new Error(
    first
      ? `config key "${[...prefix, ...first.path].map(String).join('.')}": ${first.message}`
      : messageOf(e),
  );
}

/** DSM_GATEWAY as an object (a [vars] table or a JSON string). */
function gatewayVars(env: WorkerEnv): Record<string, unknown> {
  let raw: Record<string, unknown> = {};
  if (typeof env.DSM_GATEWAY === 'string' && env.DSM_GATEWAY.trim() !== '') {
    try {
      raw = JSON.parse(env.DSM_GATEWAY) as Record<string, unknown>;
    } catch (e) {
      throw new Error(`DSM_GATEWAY is not JSON: ${messageOf(e)}`);
    }
  } else if (env.DSM_GATEWAY && typeof env.DSM_GATEWAY === 'object') {
    raw = structuredClone(env.DSM_GATEWAY);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
    throw new Error('DSM_GATEWAY must be an object');
  return raw;
}

/** The Worker's edge cache (`edgeCache` of DSM_GATEWAY, edge-cache.ts); throws an Error naming the bad key. */
export function edgeCacheFromEnv(env: WorkerEnv): EdgeCacheConfig {
  try {
    return Object.freeze(edgeCacheSchema.parse(gatewayVars(env).edgeCache ?? {}));
  } catch (e) {
    throw configKeyError(e, ['edgeCache']);
  }
}

/** The gateway config from the Worker's bindings; throws an Error naming the bad key. */
export function configFromEnv(env: WorkerEnv): GatewayConfig {
  // `edgeCache` is the Worker's own (edgeCacheFromEnv)
  const { edgeCache: _edgeCache, ...raw } = gatewayVars(env);
  const cfg: Record<string, unknown> = { ...raw };
  if (env.DSM_TRACKERS)
    cfg.trackers = env.DSM_TRACKERS.split(',')
      .map((s) => s.trim())
      .filter(Boolean);
  if (env.DSM_PUBLIC_URL) cfg.publicUrl = env.DSM_PUBLIC_URL;
  if (env.DSM_AUTH_HS256_SECRET)
    cfg.auth = { ...(cfg.auth as object | undefined), hs256Secret: env.DSM_AUTH_HS256_SECRET };
  if (env.DSM_AUTH_HS256_KEYS) {
    let keys: unknown;
    try {
      keys = JSON.parse(env.DSM_AUTH_HS256_KEYS);
    } catch (e) {
      throw new Error(`DSM_AUTH_HS256_KEYS is not JSON: ${messageOf(e)}`);
    }
    cfg.auth = { ...(cfg.auth as object | undefined), hs256Keys: keys };
  }
  if (env.DSM_ADMIN_TOKEN) cfg.admin = { ...(cfg.admin as object | undefined), token: env.DSM_ADMIN_TOKEN };
  if (env.DSM_SIGNING_KEYS) {
    let keys: unknown;
    try {
      keys = JSON.parse(env.DSM_SIGNING_KEYS);
    } catch (e) {
      throw new Error(`DSM_SIGNING_KEYS is not JSON: ${messageOf(e)}`);
    }
    cfg.downloads = { ...(cfg.downloads as object | undefined), signingKeys: keys };
  }
  const cache = (cfg.cache as string | undefined) ?? 'memory:';
  if (cache !== 'memory:') {
    throw new Error(
      `cache "${cache}" is not available in the Worker entry (it keeps tus state in isolate memory; use "memory:")`,
    );
  }
  let config: GatewayConfig;
  try {
    config = parseGatewayConfig(cfg);
  } catch (e) {
    throw configKeyError(e);
  }
  // A Worker is on the internet by nature (its `listen` means nothing): the embedded default of
  // anonymous uploads must be asked for.
  if (config.auth.mode === 'none' && !config.auth.allowAnonymousUploads) {
    throw new Error(
      'config key "auth.mode": "none" is refused in the Worker (it is public): set auth.mode "jwt" with DSM_AUTH_HS256_KEYS, or auth.allowAnonymousUploads true',
    );
  }
  if (config.admin.listen)
    throw new Error('config key "admin.listen": the Worker has no second listener; use admin.token');
  return config;
}
