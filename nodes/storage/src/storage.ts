import { mkdir } from 'node:fs/promises';
import { IdClient, Pool } from '@dsm/client';
import { nodeTransport } from '@dsm/client/node';
import { createLogger, DsmError, ErrorCode, type Logger, parseConfig, parseHostPort } from '@dsm/common';
import { createDb, isDbUnavailable, migrate } from '@dsm/db';
import { createKvStore, type KvStore } from '@dsm/kv';
import { Command, Errno } from '@dsm/packets';
import { type Handler, ProtocolServer, type RequestContext, type RunningNode } from '@dsm/server';
import {
  configSchema,
  parseListen,
  resolveDatabaseUrl,
  resolveStorePaths,
  type StorageConfig,
  type StorageConfigInput,
} from './config.ts';
import type { StorageEnv } from './env.ts';
import { handleDelete, handleDownload, handleSize, handleStat, handleUpload } from './file-ops.ts';
import { HealMonitor } from './heal-info.ts';
import { MetaStore } from './meta.ts';
import {
  handleUploadAbort,
  handleUploadAppend,
  handleUploadCommit,
  handleUploadCreate,
  handleUploadOffset,
  sweepUploads,
} from './resumable.ts';
import { idKeyFor } from './seed-rules.ts';
import { Stores } from './store.ts';
import { StoreProbe } from './store-probe.ts';
import { type TrackerLinkState, TrackerLinks } from './tracker-link.ts';

export interface StartStorageOptions {
  log?: Logger;
  /** Id source for a key (default: the id servers of the config, with failover). */
  idSource?: (key: string) => Promise<number>;
  /** Key prefix in a Redis cache (tests use a unique one; default none). */
  cachePrefix?: string;
}

export interface StorageNode extends RunningNode {
  ready: { role: 'storage'; listen: string; group: string };
  /** The port bound by `listen`. */
  port: number;
  /** The port announced to trackers. */
  advertisePort: number;
  /** Absolute store folders. */
  storePaths: readonly string[];
  /** One entry per configured tracker. */
  trackerLinks: readonly TrackerLinkState[];
  server: ProtocolServer;
  /** Runs the expired-upload sweeper now (as if the clock read `nowMs`); returns uploads deleted. */
  sweepUploads(nowMs?: number): Promise<number>;
  close(): Promise<void>;
}

const SWEEP_INTERVAL_MS = 60_000;
const MIGRATE_RETRY_MS = 5_000;

/**
 * Starts a storage server (the config is validated again, so a raw object works too; its
 * `configDir` anchors relative paths, default the current folder): metadata database (migrated; a database that is down at start-up is
 * retried in the background and requests get errno DB_UNAVAILABLE meanwhile), metadata cache,
 * store folders, protocol server, expired-upload sweeper and one link per tracker.
 */
export async function startStorage(
  configIn: StorageConfig | (StorageConfigInput & { configDir?: string }),
  opts: StartStorageOptions = {},
): Promise<StorageNode> {
  // A config from loadConfig() carries its folder; the rest is (re)validated, unknown keys refused.
  const { configDir: dirIn, ...raw } = configIn as StorageConfig;
  const config: StorageConfig = parseConfig(
    configSchema,
    raw,
    typeof dirIn === 'string' ? dirIn : process.cwd(),
  );
  const log = opts.log ?? createLogger('storage', { group: config.group });
  const storePaths = resolveStorePaths(config);
  const { host, port: listenPort } = parseListen(config.listen);
  for (const p of storePaths) await mkdir(p, { recursive: true });

  const cleanups: (() => Promise<void>)[] = [];
  const cleanup = async () => {
    for (const c of cleanups.reverse()) await c().catch((e) => log.warn({ err: e }, 'cleanup failed'));
  };

  try {
    const dbh = createDb(resolveDatabaseUrl(config));
    cleanups.push(() => dbh.close());
    const kv: KvStore = createKvStore(config.cache, { prefix: opts.cachePrefix });
    cleanups.push(() => kv.close());

    // Migrations: a database that is down now is retried in the background.
    let migrateTimer: NodeJS.Timeout | undefined;
    cleanups.push(async () => clearTimeout(migrateTimer));
    const tryMigrate = async (): Promise<boolean> => {
      try {
        await migrate(dbh.db, dbh.dialect, 'storage');
        return true;
      } catch (e) {
        if (!isDbUnavailable(e)) throw e;
        log.warn(
          { err: (e as Error).message },
          'database unavailable; retrying the migrations in the background',
        );
        return false;
      }
    };
    const retryMigrate = () => {
      migrateTimer = setTimeout(() => {
        tryMigrate().then(
          (ok) => {
            if (ok) log.info('database migrated');
            else retryMigrate();
          },
          (e) => log.error({ err: e }, 'database migration failed'),
        );
      }, MIGRATE_RETRY_MS);
      migrateTimer.unref();
    };
    const migrated = await tryMigrate();
    if (!migrated) retryMigrate();

    let idSource = opts.idSource;
    if (!idSource) {
      const pool = new Pool({
        transport: nodeTransport,
        maxPerAddress: 4,
        connectTimeoutMs: 3000,
        ioTimeoutMs: 10_000,
      });
      cleanups.push(() => pool.close());
      const ids = new IdClient(
        pool,
        config.idServers.map((a) => parseHostPort(a)),
      );
      idSource = (key) => ids.nextId(key);
    }
    const nextIdFrom = idSource;

    let markStarted!: () => void;
    let failStart!: (e: unknown) => void;
    const started = new Promise<void>((resolve, reject) => {
      markStarted = resolve;
      failStart = reject;
    });
    started.catch(() => {});
    // Filled in once the port is known (temp folders are named after it).
    let env!: StorageEnv;

    const gated =
      (h: (env: StorageEnv, ctx: RequestContext) => Promise<void>): Handler =>
      async (ctx) => {
        await started;
        await h(env, ctx);
      };
    const server = new ProtocolServer({
      name: 'storage',
      hostname: config.hostname,
      replyCommand: Command.STORAGE_REPLY,
      log,
      maxUpload: config.maxUploadBytes,
      handlers: {
        [Command.PING]: async (ctx) => ctx.reply(),
        [Command.STORAGE_UPLOAD]: gated((e, ctx) => handleUpload(e, ctx, false)),
        [Command.STORAGE_UPLOAD_EXT]: gated((e, ctx) => handleUpload(e, ctx, true)),
        [Command.STORAGE_SIZE]: gated(handleSize),
        [Command.STORAGE_DOWNLOAD]: gated(handleDownload),
        [Command.STORAGE_DELETE]: gated(handleDelete),
        [Command.STORAGE_STAT]: gated(handleStat),
        [Command.STORAGE_UPLOAD_CREATE]: gated(handleUploadCreate),
        [Command.STORAGE_UPLOAD_APPEND]: gated(handleUploadAppend),
        [Command.STORAGE_UPLOAD_OFFSET]: gated(handleUploadOffset),
        [Command.STORAGE_UPLOAD_COMMIT]: gated(handleUploadCommit),
        [Command.STORAGE_UPLOAD_ABORT]: gated(handleUploadAbort),
      },
    });
    const bound = await server.listen(listenPort, host);
    cleanups.push(() => server.close());
    const advertisePort = config.advertisePort || bound.port;
    const owner = `${config.hostname}-${advertisePort}`;
    const stores = new Stores(storePaths, owner);
    try {
      await stores.init();
    } catch (e) {
      failStart(e);
      throw e;
    }
    env = {
      config,
      stores,
      meta: new MetaStore(dbh.db, kv, config.metaCacheTtlMs, log),
      db: dbh.db,
      log,
      owner,
      started,
      async nextId(storeIndex) {
        const key = idKeyFor(config.group, storeIndex);
        let id: number;
        try {
          id = await nextIdFrom(key);
        } catch (e) {
          log.warn({ err: (e as Error)?.message ?? String(e), key }, 'no id from the id servers');
          throw new DsmError(ErrorCode.ID_UNAVAILABLE, 'Get Filepath Fail...', Errno.ID_UNAVAILABLE, {
            cause: e,
          });
        }
        if (!Number.isSafeInteger(id) || id < 0) {
          throw new DsmError(ErrorCode.ID_UNAVAILABLE, 'Get Filepath Fail...', Errno.ID_UNAVAILABLE);
        }
        return id;
      },
    };
    markStarted();

    const sweep = (nowMs?: number) => sweepUploads(env, nowMs);
    const sweepQuietly = () =>
      void sweep().catch((e) => log.warn({ err: (e as Error).message }, 'upload sweep failed'));
    sweepQuietly();
    const sweeper = setInterval(sweepQuietly, SWEEP_INTERVAL_MS);
    sweeper.unref();
    cleanups.push(async () => clearInterval(sweeper));

    const heals = config.glusterVolume
      ? new HealMonitor(config.glusterVolume, config.healCheckIntervalMs, log)
      : undefined;
    if (heals) cleanups.push(async () => heals.close());
    const probe =
      config.storeProbeIntervalMs > 0
        ? new StoreProbe(
            storePaths.map((_, i) => `${stores.tmpDir(i)}.probe`),
            config.storeProbeIntervalMs,
            config.storeProbeTimeoutMs,
            log,
            () => links.nudge(),
          )
        : undefined;
    if (probe) {
      cleanups.push(async () => probe.close());
      void probe.check();
    }
    const links = new TrackerLinks({
      trackers: config.trackers,
      group: config.group,
      hostname: config.hostname,
      port: advertisePort,
      beatIntervalMs: config.beatIntervalMs,
      secret: config.joinSecret,
      capacityPath: storePaths[0] as string,
      load: () => server.inFlight,
      pendingHeals: () => heals?.value ?? -1,
      writable: () => probe?.writable ?? true,
      log,
    });
    links.start();
    cleanups.push(() => links.close());

    const listen = `${host.includes(':') ? `[${host}]` : host}:${bound.port}`;
    log.info({ listen, advertisePort, group: config.group, stores: storePaths }, 'storage ready');
    let closing: Promise<void> | undefined;
    return {
      ready: { role: 'storage', listen, group: config.group },
      port: bound.port,
      advertisePort,
      storePaths,
      trackerLinks: links.states,
      server,
      sweepUploads: sweep,
      close: () => {
        closing ??= cleanup();
        return closing;
      },
    };
  } catch (e) {
    await cleanup();
    throw e;
  }
}
