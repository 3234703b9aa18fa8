import { createLogger, type Logger, parseConfig, parseListen, resolveSqliteUrl } from '@dsm/common';
import type { DbHandle } from '@dsm/db';
import type { KvStore } from '@dsm/kv';
import { Command } from '@dsm/packets';
import { loadNodeSecurity, startNode } from '@dsm/server';
import { JoinAccess } from './access.ts';
import { configSchema, type TrackerConfig, type TrackerConfigInput } from './config.ts';
import { connKey } from './conn-key.ts';
import { GroupRouter } from './group-router.ts';
import { trackerHandlers } from './handlers.ts';
import { Registry } from './registry.ts';

export interface StartTrackerOptions {
  log?: Logger;
  /** Prefix of every route-cache key in Redis (tests use a unique one). */
  cachePrefix?: string;
}

export interface RunningTracker {
  ready: { role: 'tracker'; listen: string };
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
    const router = new GroupRouter({
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
    log.info({ listen }, 'tracker ready');
    return { ready: { role: 'tracker' as const, listen }, port, registry, router, db, kv };
  });
}
