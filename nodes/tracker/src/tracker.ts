import { createLogger, DsmError, ErrorCode, type Logger, parseConfig, resolveSqliteUrl } from '@dsm/common';
import { createDb, type DbHandle, isDbUnavailable, migrate } from '@dsm/db';
import { createKvStore, type KvStore } from '@dsm/kv';
import {
  Command,
  decodeAddrsRequest,
  decodeBeat,
  decodeBeatExt,
  decodeJoin,
  decodeJoinExt,
  Errno,
  encodeAddrsReply,
  encodeClusterStatus,
  encodeText,
} from '@dsm/packets';
import { type Handler, ProtocolServer, type RequestContext } from '@dsm/server';
import { JoinAccess } from './access.ts';
import { APP_ID_RE, configSchema, parseListen, type TrackerConfig } from './config.ts';
import { connKey } from './conn-key.ts';
import { GroupRouter } from './group-router.ts';
import { formatGroupList, type JoinInput, Registry } from './registry.ts';

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

/** Seed joins carry the version string "1.0"; they count as protocol version 1. */
const SEED_PROTOCOL_VERSION = 1;
/** Retry period of a migration that failed because the database was unreachable. */
const MIGRATE_RETRY_MS = 1000;

const redact = (url: string): string => url.replace(/^([a-z]+:\/\/[^:/@]*:)[^@]*@/i, '$1***@');

/** `sqlite:<relative path>` resolves against the config file's folder. */
export const resolveDatabaseUrl = resolveSqliteUrl;

/**
 * Starts a tracker: storage registry (join / beat / sweep), user → group routing and the
 * address list, group list and status replies, on one ProtocolServer.
 */
export async function startTracker(
  configIn: TrackerConfig | Record<string, unknown>,
  opts: StartTrackerOptions = {},
): Promise<RunningTracker> {
  // A config from loadConfig() carries its folder; the rest is (re)validated, unknown keys refused.
  const { configDir: dirIn, ...raw } = configIn as TrackerConfig;
  const configDir = typeof dirIn === 'string' ? dirIn : process.cwd();
  const config: TrackerConfig = parseConfig(configSchema, raw, configDir);
  const log = opts.log ?? createLogger('tracker');
  const { host, port: listenPort } = parseListen(config.listen);
  const appIds = new Set(config.appIds);
  const allowedGroups = config.groups.length > 0 ? new Set(config.groups) : null;
  const access = new JoinAccess(config.allowFrom, config.joinSecret);

  const dbh = createDb(resolveDatabaseUrl(config.database, configDir));
  let kv: KvStore;
  try {
    kv = createKvStore(config.cache, { prefix: opts.cachePrefix });
  } catch (e) {
    await dbh.close();
    throw e;
  }

  // Migrations: at start; when the database is unreachable the tracker still starts (joins,
  // beats and group lists need no database) and routing retries the migration on demand.
  let migrated = false;
  let migrating: Promise<void> | null = null;
  let lastMigrateFailure = 0;
  let lastMigrateError: unknown = null;
  const schemaReady = (): Promise<void> => {
    if (migrated) return Promise.resolve();
    if (!migrating) {
      if (Date.now() - lastMigrateFailure < MIGRATE_RETRY_MS && lastMigrateError) {
        return Promise.reject(lastMigrateError);
      }
      migrating = migrate(dbh.db, dbh.dialect, 'tracker')
        .then(() => {
          migrated = true;
        })
        .catch((e) => {
          lastMigrateFailure = Date.now();
          lastMigrateError = e;
          throw e;
        })
        .finally(() => {
          migrating = null;
        });
    }
    return migrating;
  };
  try {
    await schemaReady();
  } catch (e) {
    if (!isDbUnavailable(e)) {
      await Promise.allSettled([dbh.close(), kv.close()]);
      throw e;
    }
    log.warn(
      { err: (e as Error).message },
      'database unavailable at start; routing will fail until it is back',
    );
  }

  const registry = new Registry({ beatTimeoutMs: config.beatTimeoutMs });
  const router = new GroupRouter({
    db: dbh.db,
    kv,
    registry,
    cacheTtlMs: config.routeCacheTtlMs,
    log,
    schemaReady,
  });
  // A storage's join/beat connection closing (a killed process closes its sockets) marks it
  // OFFLINE at once; the server calls this after the connection's last request finished.
  const onConnectionClose = (conn: { remoteAddress: string; remotePort: number }): void => {
    const key = connKey(conn.remoteAddress, conn.remotePort);
    const n = registry.connectionClosed(key);
    if (n > 0) log.info({ conn: key, storages: n }, 'storage connection closed; marked OFFLINE');
  };

  const keyOf = (ctx: RequestContext) => connKey(ctx.conn.remoteAddress, ctx.conn.remotePort);

  const register = (ctx: RequestContext, j: JoinInput): void => {
    if (allowedGroups && !allowedGroups.has(j.group)) {
      throw new DsmError(
        ErrorCode.UNAUTHORIZED,
        `Join Into Groups Fail, Group Not Served: ${j.group}`,
        Errno.UNAUTHORIZED,
      );
    }
    const rec = registry.join(j);
    void router.noteGroup(j.group);
    ctx.log.info(
      { group: rec.group, hostname: rec.hostname, addr: `${rec.host}:${rec.port}`, v: rec.protocolVersion },
      'storage joined',
    );
  };

  const handlers: Record<number, Handler> = {
    [Command.PING]: async (ctx) => ctx.reply(),

    [Command.TRACKER_JOIN]: async (ctx) => {
      access.checkPeer(ctx.conn.remoteAddress);
      access.checkSeedJoin();
      const j = decodeJoin(ctx.body);
      register(ctx, {
        ...j,
        host: ctx.conn.remoteAddress,
        protocolVersion: SEED_PROTOCOL_VERSION,
        conn: keyOf(ctx),
      });
      await ctx.reply();
    },

    [Command.TRACKER_JOIN_EXT]: async (ctx) => {
      access.checkPeer(ctx.conn.remoteAddress);
      const j = decodeJoinExt(ctx.body);
      access.checkSecret(j.secret);
      register(ctx, {
        group: j.group,
        hostname: j.hostname,
        version: j.version,
        port: j.port,
        startTime: j.startTime,
        joinTime: j.joinTime,
        protocolVersion: j.protocolVersion,
        totalBytes: j.totalBytes,
        freeBytes: j.freeBytes,
        load: j.load,
        host: ctx.conn.remoteAddress,
        conn: keyOf(ctx),
      });
      await ctx.reply();
    },

    [Command.TRACKER_BEAT]: async (ctx) => {
      access.checkPeer(ctx.conn.remoteAddress);
      const b = decodeBeat(ctx.body);
      const key = keyOf(ctx);
      registry.beat(b.group, b.hostname, ctx.conn.remoteAddress, key);
      await ctx.reply();
    },

    [Command.TRACKER_BEAT_EXT]: async (ctx) => {
      access.checkPeer(ctx.conn.remoteAddress);
      const b = decodeBeatExt(ctx.body);
      const key = keyOf(ctx);
      registry.beatExt({
        group: b.group,
        host: ctx.conn.remoteAddress,
        port: b.port,
        totalBytes: b.totalBytes,
        freeBytes: b.freeBytes,
        load: b.load,
        pendingHeals: b.pendingHeals,
        writable: b.writable,
        conn: key,
      });
      await ctx.reply();
    },

    [Command.TRACKER_ADDRS]: async (ctx) => {
      const { appId, userId } = decodeAddrsRequest(ctx.body);
      if (!APP_ID_RE.test(appId)) {
        throw new DsmError(ErrorCode.BAD_INPUT, `Invalid APPID: ${appId}`, Errno.BAD_FIELD);
      }
      if (!appIds.has(appId)) {
        throw new DsmError(ErrorCode.UNKNOWN_APP, `Unknownn APPID: ${appId}`, Errno.UNKNOWN_APP);
      }
      const group = await router.route(appId, userId);
      const picked = registry.pick(group, config.maxAddrs);
      if (picked.length === 0) {
        throw new DsmError(ErrorCode.NO_STORAGE, 'Get Storage Address Fail...', Errno.NO_STORAGE);
      }
      await ctx.reply(
        encodeAddrsReply({ group, addrs: picked.map((r) => ({ host: r.host, port: r.port })) }),
      );
    },

    [Command.TRACKER_GROUPS]: async (ctx) => {
      await ctx.reply(encodeText(formatGroupList(registry)));
    },

    [Command.TRACKER_STATUS]: async (ctx) => {
      const groups = registry.groupNames().map((name) => ({
        name,
        storages: registry.storages(name).map((r) => registry.toStatus(r)),
      }));
      await ctx.reply(encodeClusterStatus({ tracker: config.hostname, now: registry.now(), groups }));
    },
  };

  const server = new ProtocolServer({
    name: 'tracker',
    hostname: config.hostname,
    replyCommand: Command.TRACKER_REPLY,
    handlers,
    log,
    onConnectionClose,
  });
  let addr: { address: string; port: number };
  try {
    addr = await server.listen(listenPort, host);
  } catch (e) {
    await Promise.allSettled([dbh.close(), kv.close()]);
    throw e;
  }

  const sweeper = setInterval(() => {
    const r = registry.sweep();
    if (r.offline > 0 || r.dropped > 0) log.info(r, 'sweep');
  }, config.sweepIntervalMs);
  sweeper.unref();

  const listen = `${addr.address.includes(':') ? `[${addr.address}]` : addr.address}:${addr.port}`;
  log.info({ listen, database: redact(config.database), cache: redact(config.cache) }, 'tracker ready');

  let closing: Promise<void> | undefined;
  return {
    ready: { role: 'tracker', listen },
    port: addr.port,
    registry,
    router,
    db: dbh,
    kv,
    close: () => {
      closing ??= (async () => {
        clearInterval(sweeper);
        await server.close();
        await router.settle();
        await Promise.allSettled([dbh.close(), kv.close()]);
      })();
      return closing;
    },
  };
}
