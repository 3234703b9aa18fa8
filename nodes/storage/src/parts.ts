import { IdClient, Pool } from '@dsm/client';
import { createNodeTransport, nodeTransport } from '@dsm/client/node';
import { DsmError, ErrorCode, type Logger, messageOf, parseHostPort } from '@dsm/common';
import { Command, Errno } from '@dsm/packets';
import type { Handler, NodeKit, NodeSecurity, RequestContext } from '@dsm/server';
import type { StorageConfig } from './config.ts';
import type { StorageEnv } from './env.ts';
import {
  handleDelete,
  handleDeletes,
  handleDownload,
  handleSize,
  handleStat,
  handleUpload,
} from './file-ops.ts';
import { HealMonitor } from './heal-info.ts';
import { IdRanges } from './id-ranges.ts';
import { DELETE_LOG_KEEP_MS } from './meta.ts';
import {
  handleUploadAbort,
  handleUploadAppend,
  handleUploadCommit,
  handleUploadCreate,
  handleUploadOffset,
  sweepUploads,
} from './resumable.ts';
import { idKeyFor } from './seed-rules.ts';
import type { Stores } from './store.ts';
import { StoreProbe } from './store-probe.ts';

const SWEEP_INTERVAL_MS = 60_000;

/** How this node connects to other nodes: TLS when `tls.caFile` is configured. */
export function outgoingTransport(security: NodeSecurity) {
  const tls = security.tlsClient;
  return tls ? createNodeTransport({ tls: { ca: tls.ca, servername: tls.servername } }) : nodeTransport;
}

type EnvHandler = (env: StorageEnv, ctx: RequestContext) => Promise<void>;

/**
 * The storage's handler table; every file command waits for `env()` (start-up done, database
 * ready), which answers without a promise once both hold (no await per request then).
 */
export function storageHandlers(env: () => StorageEnv | Promise<StorageEnv>): Record<number, Handler> {
  const gated =
    (h: EnvHandler): Handler =>
    (ctx) => {
      const e = env();
      return e instanceof Promise ? e.then((x) => h(x, ctx)) : h(e, ctx);
    };
  return {
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
    [Command.STORAGE_DELETES]: gated(handleDeletes),
  };
}

/**
 * Ids for new files: `source` (tests), else the config's id servers with failover, in ranges of
 * `idRangeSize` (see IdRanges; 0 = one request per id, as the seed). Any failure
 * is errno ID_UNAVAILABLE "Get Filepath Fail...".
 */
export function idAllocator(
  kit: NodeKit,
  config: StorageConfig,
  security: NodeSecurity,
  source?: (key: string) => Promise<number>,
): (storeIndex: number) => Promise<number> {
  let next = source;
  if (!next) {
    const pool = new Pool({
      transport: outgoingTransport(security),
      auth: security.ownKey,
      maxPerAddress: 4,
      connectTimeoutMs: 3000,
      ioTimeoutMs: 10_000,
    });
    kit.defer('id server pool', () => pool.close());
    const ids = new IdClient(
      pool,
      config.idServers.map((a) => parseHostPort(a)),
    );
    if (config.idRangeSize > 0) {
      const ranges = new IdRanges(
        (key, count) => ids.nextRange(key, count),
        (key) => ids.nextId(key),
        config.idRangeSize,
        kit.log,
      );
      next = (key) => ranges.next(key);
    } else {
      next = (key) => ids.nextId(key);
    }
  }
  const from = next;
  return async (storeIndex) => {
    const key = idKeyFor(config.group, storeIndex);
    let id: number;
    try {
      id = await from(key);
    } catch (e) {
      kit.log.warn({ err: messageOf(e), key }, 'no id from the id servers');
      throw new DsmError(ErrorCode.ID_UNAVAILABLE, 'Get Filepath Fail...', Errno.ID_UNAVAILABLE, {
        cause: e,
      });
    }
    if (!Number.isSafeInteger(id) || id < 0) {
      throw new DsmError(ErrorCode.ID_UNAVAILABLE, 'Get Filepath Fail...', Errno.ID_UNAVAILABLE);
    }
    return id;
  };
}

/**
 * The storage's background work: the expired-upload sweeper and the delete log's trim (now and
 * every minute), the GlusterFS heal monitor and the store write probe (both optional); all
 * stopped by the kit.
 */
export function backgroundTasks(
  kit: NodeKit,
  env: StorageEnv,
  stores: Stores,
  storePaths: readonly string[],
  onStoreChange: () => void,
): { sweep: (nowMs?: number) => Promise<number>; heals?: HealMonitor; probe?: StoreProbe } {
  const { config } = env;
  const log: Logger = kit.log;
  const sweep = (nowMs?: number) => sweepUploads(env, nowMs);
  const sweepQuietly = () => {
    void sweep().catch((e) => log.warn({ err: messageOf(e) }, 'upload sweep failed'));
    void env.meta
      .trimDeleteLog(Date.now() - DELETE_LOG_KEEP_MS)
      .catch((e) => log.warn({ err: messageOf(e) }, 'delete log trim failed'));
  };
  sweepQuietly();
  const sweeper = setInterval(sweepQuietly, SWEEP_INTERVAL_MS);
  sweeper.unref();
  kit.defer('upload sweeper', () => clearInterval(sweeper));

  const heals = config.glusterVolume
    ? new HealMonitor(config.glusterVolume, config.healCheckIntervalMs, log)
    : undefined;
  if (heals) kit.defer('heal monitor', () => heals.close());
  const probe =
    config.storeProbeIntervalMs > 0
      ? new StoreProbe(
          storePaths.map((_, i) => `${stores.tmpDir(i)}.probe`),
          config.storeProbeIntervalMs,
          config.storeProbeTimeoutMs,
          log,
          onStoreChange,
        )
      : undefined;
  if (probe) {
    kit.defer('store probe', () => probe.close());
    void probe.check();
  }
  return { sweep, heals, probe };
}
