import { mkdir } from 'node:fs/promises';
import { createLogger, type Logger, messageOf, parseConfig, parseListen } from '@dsm/common';
import { Command } from '@dsm/packets';
import {
  loadNodeSecurity,
  type NodeDatabase,
  type NodeKit,
  type ProtocolServer,
  type RunningNode,
  startNode,
} from '@dsm/server';
import { type RecoveryResult, recoverJournal } from './commit-journal.ts';
import {
  configSchema,
  resolveDatabaseUrl,
  resolveStorePaths,
  type StorageConfig,
  type StorageConfigInput,
} from './config.ts';
import type { StorageEnv } from './env.ts';
import { KnownDirs } from './fs-util.ts';
import { GroupCommitter } from './group-commit.ts';
import { LocalClaims } from './lock.ts';
import { MetaStore } from './meta.ts';
import { backgroundTasks, idAllocator, outgoingTransport, storageHandlers } from './parts.ts';
import { Stores } from './store.ts';
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
  /** Resolves once the commit journal left by a previous run is resolved (see commit-journal.ts). */
  recovered: Promise<RecoveryResult>;
  /** Group commit batches so far and uploads committed in them. */
  commitStats(): { batches: number; committed: number };
  /** Runs the expired-upload sweeper now (as if the clock read `nowMs`); returns uploads deleted. */
  sweepUploads(nowMs?: number): Promise<number>;
  close(): Promise<void>;
}

/**
 * Starts a storage server (the config is validated again, so a raw object works too; its
 * `configDir` anchors relative paths, default the current folder): metadata database and cache,
 * store folders, protocol server, background tasks and one link per tracker. File requests
 * wait until start-up is done; while the database is unreachable they get DB_UNAVAILABLE.
 */
export async function startStorage(
  configIn: StorageConfig | (StorageConfigInput & { configDir?: string }),
  opts: StartStorageOptions = {},
): Promise<StorageNode> {
  const config: StorageConfig = parseConfig(configSchema, configIn);
  const log = opts.log ?? createLogger('storage', { group: config.group });
  const security = loadNodeSecurity(config, parseListen(config.listen).host);
  const storePaths = resolveStorePaths(config);
  for (const p of storePaths) await mkdir(p, { recursive: true });
  return startNode(log, async (kit) => {
    const db = await kit.openDatabase('storage', resolveDatabaseUrl(config));
    const kv = kit.openCache(config.cache, { prefix: opts.cachePrefix });
    const nextId = idAllocator(kit, config, security, opts.idSource);
    // Filled in once the port is known (temp folders are named after it); requests wait for it.
    let setEnv!: (env: StorageEnv) => void;
    let failStart!: (e: unknown) => void;
    const envReady = new Promise<StorageEnv>((resolve, reject) => {
      setEnv = resolve;
      failStart = reject;
    });
    envReady.catch(() => {});
    const { server, host, port } = await kit.listen({
      name: 'storage',
      listen: config.listen,
      hostname: config.hostname,
      replyCommand: Command.STORAGE_REPLY,
      maxUpload: config.maxUploadBytes,
      security,
      handlers: storageHandlers(async () => {
        const env = await envReady;
        await db.ready();
        return env;
      }),
    });
    const advertisePort = config.advertisePort || port;
    const owner = `${config.hostname}-${advertisePort}`;
    const stores = new Stores(storePaths, owner);
    await stores.init().catch((e) => {
      failStart(e);
      throw e;
    });
    const started = envReady.then(() => {});
    const meta = new MetaStore(db.db, kv, config.metaCacheTtlMs, log);
    const commits = new GroupCommitter(meta, log);
    kit.defer('group commit', () => commits.close());
    const claims = new LocalClaims();
    const env: StorageEnv = {
      config,
      stores,
      meta,
      db: db.db,
      log,
      owner,
      started,
      nextId,
      commits,
      claims,
      dirs: new KnownDirs(),
    };
    setEnv(env);
    const recovered = recoverUntilDone(kit, stores, db, log);
    let links: TrackerLinks | undefined;
    const tasks = backgroundTasks(kit, env, stores, storePaths, () => links?.nudge());
    links = new TrackerLinks({
      trackers: config.trackers,
      group: config.group,
      hostname: config.hostname,
      port: advertisePort,
      beatIntervalMs: config.beatIntervalMs,
      secret: config.joinSecret,
      auth: security.ownKey,
      transport: outgoingTransport(security),
      capacityPath: storePaths[0] as string,
      load: () => server.inFlight,
      pendingHeals: () => tasks.heals?.value ?? -1,
      writable: () => tasks.probe?.writable ?? true,
      log,
    });
    links.start();
    kit.defer('tracker links', () => links?.close());
    const listen = `${host.includes(':') ? `[${host}]` : host}:${port}`;
    log.info({ listen, advertisePort, group: config.group, stores: storePaths }, 'storage ready');
    return {
      ready: { role: 'storage' as const, listen, group: config.group },
      port,
      advertisePort,
      storePaths,
      trackerLinks: links.states,
      server,
      sweepUploads: tasks.sweep,
      recovered,
      commitStats: () => commits.stats,
    };
  });
}

const RECOVERY_RETRY_MS = 1000;

/**
 * Resolves the commit journal of the previous run in the background, retrying while the
 * database cannot be asked (requests are served meanwhile: the entries are files nobody was
 * told about, with ids no new upload gets).
 */
function recoverUntilDone(
  kit: NodeKit,
  stores: Stores,
  db: NodeDatabase,
  log: Logger,
): Promise<RecoveryResult> {
  let stopped = false;
  kit.defer('journal recovery', () => {
    stopped = true;
  });
  const attempt = async (): Promise<RecoveryResult> => {
    for (;;) {
      try {
        await db.ready();
        return await recoverJournal(stores, db.db, log);
      } catch (e) {
        if (stopped) throw e;
        log.warn({ err: messageOf(e) }, 'commit journal recovery failed; retrying');
        await new Promise((r) => setTimeout(r, RECOVERY_RETRY_MS).unref());
        if (stopped) throw e;
      }
    }
  };
  const p = attempt();
  p.catch(() => {});
  return p;
}
