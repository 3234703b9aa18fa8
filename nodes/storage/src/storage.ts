import { mkdir, readdir } from 'node:fs/promises';
import { createLogger, type Logger, messageOf, parseConfig, parseListen } from '@dsm/common';
import { Command } from '@dsm/packets';
import {
  loadNodeSecurity,
  type NodeDatabase,
  type NodeKit,
  type ProtocolServer,
  type ReadyCheck,
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
import { KnownDirs, SpaceReader } from './fs-util.ts';
import { GroupCommitter } from './group-commit.ts';
import type { HealMonitor } from './heal-info.ts';
import { LocalClaims } from './lock.ts';
import { MetaStore } from './meta.ts';
import { OpenFiles } from './open-files.ts';
import { backgroundTasks, idAllocator, outgoingTransport, storageHandlers } from './parts.ts';
import { SmallFileWriter } from './small-writer.ts';
import { Stores } from './store.ts';
import type { StoreProbe } from './store-probe.ts';
import { type TrackerLinkState, TrackerLinks } from './tracker-link.ts';

export interface StartStorageOptions {
  log?: Logger;
  /** Id source for a key (default: the id servers of the config, with failover). */
  idSource?: (key: string) => Promise<number>;
  /** Key prefix in a Redis cache (tests use a unique one; default none). */
  cachePrefix?: string;
}

export interface StorageNode extends RunningNode {
  ready: { role: 'storage'; listen: string; group: string; admin?: string };
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
    let envNow: StorageEnv | undefined;
    void envReady.then(
      (e) => {
        envNow = e;
      },
      () => {},
    );
    const { server, host, port } = await kit.listen({
      name: 'storage',
      listen: config.listen,
      hostname: config.hostname,
      replyCommand: Command.STORAGE_REPLY,
      maxUpload: config.maxUploadBytes,
      security,
      handlers: storageHandlers(() =>
        envNow && db.migrated
          ? envNow
          : (async () => {
              const env = await envReady;
              await db.ready();
              return env;
            })(),
      ),
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
    // handles kept between requests only on local file systems (Stores.local)
    const dirs = new KnownDirs(4096, stores.local ? 32 : 0);
    // a store no other member writes to needs no check that a kept handle's path is unchanged
    const openFiles = new OpenFiles(stores.local ? 128 : 0, 10_000, config.storesShared);
    kit.defer('open files', () => openFiles.close());
    // closed after the group commit (deferred steps run last first): its journal removals end first
    const smallFiles = new SmallFileWriter(log);
    kit.defer('small-file writer', () => smallFiles.close());
    const commits = new GroupCommitter(meta, log, {
      syncDir: (d) => dirs.sync(d),
      // a local store: on the small-file writer's thread (a metadata call of microseconds there)
      ...(stores.local ? { removeJournal: (p: string) => smallFiles.remove(p) } : {}),
    });
    kit.defer('group commit', async () => {
      await commits.close();
      await dirs.close();
    });
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
      dirs,
      openFiles,
      smallFiles,
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
    storageGauges(kit, { stores, storePaths, commits, heals: tasks.heals, probe: tasks.probe, links });
    const admin = await kit.serveAdmin(config.admin, {
      allow: security.allow,
      checks: async () => storageChecks(tasks.probe, links),
    });
    const listen = `${host.includes(':') ? `[${host}]` : host}:${port}`;
    log.info(
      { listen, advertisePort, group: config.group, stores: storePaths, admin: admin?.url },
      'storage ready',
    );
    return {
      ready: {
        role: 'storage' as const,
        listen,
        group: config.group,
        ...(admin ? { admin: admin.url } : {}),
      },
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

/** `/readyz` beyond the database and cache: the store takes writes, a tracker has the storage. */
function storageChecks(probe: StoreProbe | undefined, links: TrackerLinks | undefined): ReadyCheck[] {
  const joined = links?.states.some((l) => l.status === 'joined') ?? false;
  return [
    probe && !probe.writable
      ? { name: 'store', ok: false, error: probe.reason ?? 'the store refuses writes' }
      : { name: 'store', ok: true },
    joined
      ? { name: 'trackers', ok: true }
      : {
          name: 'trackers',
          ok: false,
          error: links?.states.map((l) => `${l.tracker}: ${l.lastError ?? l.status}`).join('; ') ?? 'none',
        },
  ];
}

/** The storage's own metrics, read when scraped. */
function storageGauges(
  kit: NodeKit,
  o: {
    stores: Stores;
    storePaths: readonly string[];
    commits: GroupCommitter;
    heals: HealMonitor | undefined;
    probe: StoreProbe | undefined;
    links: TrackerLinks;
  },
): void {
  const m = kit.metrics;
  // a statfs of a GlusterFS mount may block while a replica is away: the last figures then
  const space = new SpaceReader(o.storePaths[0] as string);
  const readSpace = async () => {
    await Promise.race([space.read().catch(() => {}), new Promise((r) => setTimeout(r, 1000).unref())]);
    return space.last?.space;
  };
  m.gauge('dsm_storage_free_bytes', 'Free bytes of the store (its first folder)', [], async (g) => {
    const s = await readSpace();
    if (s) g.set(s.freeBytes);
  });
  m.gauge('dsm_storage_total_bytes', 'Size of the store (its first folder)', [], async (g) => {
    const s = await readSpace();
    if (s) g.set(s.totalBytes);
  });
  m.gauge('dsm_storage_writable', '1 while the store takes writes (the write probe passes)', [], (g) =>
    g.set(o.probe?.writable === false ? 0 : 1),
  );
  m.gauge(
    'dsm_storage_pending_heals',
    'GlusterFS heal entries pending on this brick (-1 = unknown)',
    [],
    (g) => g.set(o.heals?.value ?? -1),
  );
  m.gauge(
    'dsm_storage_temp_files',
    'Files in the temp folders: uploads being received, resumable parts',
    [],
    async (g) => {
      let n = 0;
      for (let i = 0; i < o.storePaths.length; i++)
        n += (await readdir(o.stores.tmpDir(i)).catch(() => [] as string[])).length;
      g.set(n);
    },
  );
  m.gauge('dsm_storage_tracker_links_joined', 'Trackers this storage is joined to', [], (g) =>
    g.set(o.links.states.filter((l) => l.status === 'joined').length),
  );
  m.counter(
    'dsm_storage_commit_batches_total',
    'Group commit batches (one transaction each)',
    [],
    () => o.commits.stats.batches,
  );
  m.counter(
    'dsm_storage_commits_total',
    'Uploads committed by group commit',
    [],
    () => o.commits.stats.committed,
  );
}
