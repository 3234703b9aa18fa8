import { createLogger, type Logger, parseConfig, parseListen, resolveSqliteUrl } from '@dsm/common';
import type { DbHandle } from '@dsm/db';
import type { KvStore } from '@dsm/kv';
import { Command } from '@dsm/packets';
import { loadNodeSecurity, type NodeMetrics, startNode } from '@dsm/server';
import { JoinAccess } from './access.ts';
import { configSchema, type TrackerConfig, type TrackerConfigInput } from './config.ts';
import { connKey } from './conn-key.ts';
import { GroupRouter } from './group-router.ts';
import { trackerHandlers } from './handlers.ts';
import { Registry, type StorageRecord } from './registry.ts';

export interface StartTrackerOptions {
  log?: Logger;
  /** Prefix of every route-cache key in Redis (tests use a unique one). */
  cachePrefix?: string;
}

export interface RunningTracker {
  ready: { role: 'tracker'; listen: string; admin?: string };
  port: number;
  registry: Registry;
  router: GroupRouter;
  /** The database handle (tests close it to simulate an outage). */
  db: DbHandle;
  kv: KvStore;
  close(): Promise<void>;
}

/** `sqlite:<relative path>` resolves against the config file's folder. */
export const resolveDatabaseUrl = resolveSqliteUrl;

/**
 * Starts a tracker: storage registry (join / beat / sweep), user → group routing and the
 * address list, group list and status replies. Joins, beats and group lists need no database,
 * so a tracker whose database is down still serves them (routing answers DB_UNAVAILABLE).
 */
export async function startTracker(
  configIn: TrackerConfig | (TrackerConfigInput & { configDir?: string }),
  opts: StartTrackerOptions = {},
): Promise<RunningTracker> {
  // A config from loadConfig() carries its folder; the rest is (re)validated, unknown keys refused.
  const config: TrackerConfig = parseConfig(configSchema, configIn);
  const log = opts.log ?? createLogger('tracker');
  const security = loadNodeSecurity(config, parseListen(config.listen).host);
  return startNode(log, async (kit) => {
    const db = await kit.openDatabase(
      'tracker',
      resolveDatabaseUrl(config.database, config.configDir ?? '.'),
    );
    const kv = kit.openCache(config.cache, { prefix: opts.cachePrefix });
    const registry = new Registry({ beatTimeoutMs: config.beatTimeoutMs });
    const lookups = kit.metrics.counter(
      'dsm_tracker_route_lookups_total',
      'User to group lookups by where the answer came from: cache, database (t_router), assigned (a new user), none (a read for an unknown user)',
      ['source'],
    );
    const cacheErrors = kit.metrics.counter(
      'dsm_tracker_route_cache_errors_total',
      'Route cache operations that failed (the lookup went on to the database)',
      ['op'],
    );
    trackerGauges(kit.metrics, registry);
    const router = new GroupRouter({
      onLookup: (source) => lookups.inc({ source }),
      onCacheError: (op) => cacheErrors.inc({ op }),
      db: db.db,
      kv,
      registry,
      cacheTtlMs: config.routeCacheTtlMs,
      log,
      schemaReady: db.ready,
    });
    kit.defer('route writes', () => router.settle());
    const access = new JoinAccess(config.joinSecret);
    const { port, listen } = await kit.listen({
      name: 'tracker',
      listen: config.listen,
      hostname: config.hostname,
      replyCommand: Command.TRACKER_REPLY,
      security,
      handlers: trackerHandlers({ config, registry, router, access }),
      // A storage's join/beat connection closing (a killed process closes its sockets) marks
      // it OFFLINE at once; called after the connection's last request finished.
      onConnectionClose: (conn) => {
        const key = connKey(conn.remoteAddress, conn.remotePort);
        const n = registry.connectionClosed(key);
        if (n > 0) log.info({ conn: key, storages: n }, 'storage connection closed; marked OFFLINE');
      },
    });
    const sweeper = setInterval(() => {
      const r = registry.sweep();
      if (r.offline > 0 || r.dropped > 0) log.info(r, 'sweep');
    }, config.sweepIntervalMs);
    sweeper.unref();
    kit.defer('sweeper', () => clearInterval(sweeper));
    const admin = await kit.serveAdmin(config.admin, { allow: security.allow });
    log.info({ listen, admin: admin?.url }, 'tracker ready');
    return {
      ready: { role: 'tracker' as const, listen, ...(admin ? { admin: admin.url } : {}) },
      port,
      registry,
      router,
      db,
      kv,
    };
  });
}

/** Storages by group and state, and what they report (read from the registry when scraped). */
function trackerGauges(metrics: NodeMetrics, registry: Registry): void {
  metrics.gauge(
    'dsm_tracker_storages',
    'Storages known to this tracker by group and state',
    ['group', 'state'],
    (g) => {
      g.reset();
      for (const group of registry.groupNames()) {
        const n = { ACTIVE: 0, ONLINE: 0, OFFLINE: 0 };
        for (const r of registry.storages(group)) n[r.state]++;
        for (const [state, v] of Object.entries(n)) g.set({ group, state }, v);
      }
    },
  );
  const perStorage = (name: string, help: string, value: (r: StorageRecord) => number) =>
    metrics.gauge(name, help, ['group', 'storage'], (g) => {
      g.reset();
      for (const group of registry.groupNames())
        for (const r of registry.storages(group)) g.set({ group, storage: `${r.host}:${r.port}` }, value(r));
    });
  perStorage(
    'dsm_tracker_storage_free_bytes',
    'Free bytes each storage reported in its last beat',
    (r) => r.freeBytes,
  );
  perStorage(
    'dsm_tracker_storage_total_bytes',
    'Total bytes each storage reported in its last beat',
    (r) => r.totalBytes,
  );
  perStorage('dsm_tracker_storage_writable', '1 when the storage said its store takes writes', (r) =>
    r.writable ? 1 : 0,
  );
  perStorage(
    'dsm_tracker_storage_pending_heals',
    'Pending heals each storage reported (-1 = unknown)',
    (r) => r.pendingHeals,
  );
  perStorage(
    'dsm_tracker_storage_beat_age_seconds',
    'Seconds since the last join or beat of each storage',
    (r) => Math.max(0, (registry.now() - r.beatTime) / 1000),
  );
}
