// The Cloudflare Worker entry (wrangler.toml `main`): the same Hono app as the Node entry, with a
// DsmClient over `cloudflare:sockets`. Runtime-neutral modules only (no node:, no prom-client).
import { DsmClient } from '@dsm/client';
import { workersTlsTransport, workersTransport } from '@dsm/client/workers';
import { ErrorCode, messageOf } from '@dsm/common/errors';
import { LruMap } from '@dsm/common/lru';
import type { KvStore } from '@dsm/kv/kv-store';
import { parseAddress } from '@dsm/packets';
import { createApp } from './app.ts';
import { TokenVerifier } from './auth.ts';
import type { GatewayConfig } from './config.ts';
import { GatewayCore, type GatewayLog, type StatCache } from './core.ts';
import { DurableKvObject, DurableKvStore, type DurableObjectStateLike } from './durable-kv.ts';
import { EdgeCache, type EdgeCacheApi } from './edge-cache.ts';
import { EdgeLimits } from './edge-limits.ts';
import { DeleteJournal, KvDeleteLog } from './invalidation.ts';
import { IsolateKvStore } from './isolate-kv.ts';
import { HttpError, problemResponse, toProblem } from './problem.ts';
import { TusService, tusKeys } from './tus.ts';
import {
  clusterKeyFromEnv,
  edgeCacheFromEnv,
  type WorkerEnv,
  type WorkerState,
  workerFromEnv,
} from './worker-config.ts';

/** The subset of the Workers ExecutionContext used here. */
export interface WorkerContext {
  waitUntil(p: Promise<unknown>): void;
  passThroughOnException?(): void;
}

/** Workers' IdentityTransformStream that sets Content-Length from the length it is given. */
type FixedLengthStreamCtor = new (length: number | bigint) => TransformStream<Uint8Array, Uint8Array>;

/** Per-isolate state, reused by every request the isolate serves. */
interface Isolate {
  /** The DSM_* bindings this state was built from. */
  key: string;
  config: GatewayConfig;
  kv: KvStore;
  log: GatewayLog;
  statCache: StatCache;
  verifier: TokenVerifier;
  edgeLimits: EdgeLimits;
  /** Slices and stats in the Cache API (config `edgeCache`); null when off or without a cache. */
  edge: EdgeCache | null;
  /** The delete journal, dropping from the isolate's stat cache and slices. */
  journal: DeleteJournal;
}

let isolate: Isolate | null = null;

const LEVELS = { debug: 10, info: 20, warn: 30, error: 40 } as const;

/** JSON lines on the console, which is where Workers logs go (Workers Logs, `wrangler tail`). */
function consoleLog(level: string | undefined): GatewayLog {
  const min = LEVELS[(level ?? 'warn') as keyof typeof LEVELS] ?? LEVELS.warn;
  const at =
    (name: keyof typeof LEVELS) =>
    (obj: object, msg?: string): void => {
      if (LEVELS[name] < min) return;
      const { err, ...rest } = obj as { err?: unknown };
      const line = JSON.stringify({
        level: name,
        time: Date.now(),
        name: 'gateway',
        ...rest,
        ...(err instanceof Error ? { err: { message: err.message, stack: err.stack } } : {}),
        msg,
      });
      // biome-ignore lint/suspicious/noConsole: the console is the Workers runtime's log sink
      if (name === 'error' || name === 'warn') console.error(line);
      // biome-ignore lint/suspicious/noConsole: the console is the Workers runtime's log sink
      else console.log(line);
    };
  return { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

/** The Durable Object store of `state` (an upload's keys in one object, the rest sharded). */
function stateStore(
  state: Extract<WorkerState, { kind: 'durable-object' }>,
  log: GatewayLog,
  debug: boolean,
  local?: { name: string; kv: KvStore },
): DurableKvStore {
  return new DurableKvStore(state.namespace, {
    limits: state.limits,
    group: tusKeys.uploadOf,
    ...(local ? { local } : {}),
    // DSM_LOG_LEVEL debug: one line per Durable Object request (what a request costs)
    ...(debug
      ? { onCall: (op: string, object: string) => log.debug({ op, object }, 'durable object call') }
      : {}),
  });
}

/** A DsmClient for one request (or one alarm run) over `cloudflare:sockets`. */
function clientFor(config: GatewayConfig, env: WorkerEnv): DsmClient {
  return new DsmClient({
    trackers: config.trackers.map(parseAddress),
    // cloudflare:sockets `secureTransport: 'on'` when the nodes listen with TLS
    transport: config.cluster.tls === 'on' ? workersTlsTransport : workersTransport,
    auth: clusterKeyFromEnv(config, env),
    locateCacheMs: config.locateCacheMs,
    locateCacheMax: config.locateCacheMax,
    ioTimeoutMs: config.ioTimeoutMs,
    // Workers allow 6 simultaneous outgoing connections per request
    maxPerAddress: 2,
    idleTimeoutMs: 60_000,
  });
}

function isolateFor(env: WorkerEnv): Isolate {
  const key = JSON.stringify([
    env.DSM_GATEWAY,
    env.DSM_TRACKERS,
    env.DSM_PUBLIC_URL,
    env.DSM_AUTH_HS256_SECRET,
    env.DSM_AUTH_HS256_KEYS,
    env.DSM_ADMIN_TOKEN,
    env.DSM_SIGNING_KEYS,
    env.DSM_LOG_LEVEL,
  ]);
  if (isolate && isolate.key === key) return isolate;
  const { config, state } = workerFromEnv(env);
  const edgeCfg = edgeCacheFromEnv(env);
  const previous = isolate?.kv instanceof IsolateKvStore ? isolate.kv : undefined;
  const log = consoleLog(env.DSM_LOG_LEVEL);
  const cacheApi = (globalThis as { caches?: { default?: EdgeCacheApi } }).caches?.default;
  // isolate memory is kept across a config change: uploads in progress stay resumable
  const kv: KvStore =
    state.kind === 'memory'
      ? (previous ?? new IsolateKvStore(config.memoryCacheMaxKeys))
      : stateStore(state, log, env.DSM_LOG_LEVEL === 'debug');
  const statCache: StatCache = new LruMap(config.statCacheMax);
  const edge =
    edgeCfg.enabled && cacheApi
      ? new EdgeCache(edgeCfg, cacheApi, {
          // keys on the public host when there is one (the zone's own); never fetched
          keyOrigin: config.publicUrl ? new URL(config.publicUrl).origin : 'https://dsm-edge-cache.invalid',
          log,
        })
      : null;
  isolate = {
    key,
    config,
    kv,
    log,
    statCache,
    verifier: new TokenVerifier(config.auth),
    edgeLimits: new EdgeLimits(config.limits),
    edge,
    // the deletes through this Worker's isolates, journaled in their store: not the storage
    // delete log, whose reads would be one request's sockets awaited by others, which workerd
    // does not allow; how long a stat is trusted bounds how long a delete made around the
    // Worker goes unseen here (core.ts statMaxAgeMs)
    journal: new DeleteJournal(
      new KvDeleteLog(kv),
      config.invalidationPollMs,
      (id) => {
        statCache.delete(id);
        edge?.slices.forget(id);
      },
      () => {
        statCache.clear();
        edge?.slices.clear();
      },
    ),
  };
  return isolate;
}

/**
 * One app per request over a DsmClient of its own: Workers bind a socket to the request that
 * opened it, so connections cannot be pooled across requests. The config, the tus state, the
 * stat cache, the token verifier and the edge cache are per isolate. `background`: work of this
 * request that others may wait for (slice reads), kept alive past the reply.
 */
function build(env: WorkerEnv, background?: (p: Promise<unknown>) => void) {
  const iso = isolateFor(env);
  const { config } = iso;
  const client = clientFor(config, env);
  const built = createApp({
    client,
    kv: iso.kv,
    config,
    log: iso.log,
    statCache: iso.statCache,
    verifier: iso.verifier,
    edgeLimits: iso.edgeLimits,
    journal: iso.journal,
    ...(iso.edge ? { slices: iso.edge.slices, statStore: iso.edge } : {}),
    ...(background ? { background } : {}),
  });
  return { ...built, client, iso };
}

function configProblem(e: unknown, req: Request): Response {
  const err = new HttpError(500, ErrorCode.CONFIG, `the Worker is misconfigured: ${messageOf(e)}`);
  return problemResponse(toProblem(err, new URL(req.url).pathname), req.method);
}

/** Resolves when every promise of `pending` settled, those added meanwhile too. */
async function settled(pending: Promise<unknown>[]): Promise<void> {
  for (let seen = 0; seen < pending.length; ) {
    const now = pending.slice(seen);
    seen = pending.length;
    await Promise.allSettled(now);
  }
}

/**
 * The response as it goes out: a body of known length goes through a FixedLengthStream, so
 * the runtime sends Content-Length instead of chunked encoding (players and CDNs want it); the
 * request's client is closed once the body has been sent (or the client went away) and the
 * slice reads it started (which other requests may share) are over.
 */
function finish(res: Response, client: DsmClient, ctx: WorkerContext, pending: Promise<unknown>[]): Response {
  const close = () =>
    settled(pending)
      .then(() => client.close())
      .catch(() => {});
  if (!res.body) {
    ctx.waitUntil(close());
    return res;
  }
  const len = res.headers.get('content-length');
  const FixedLengthStream = (globalThis as { FixedLengthStream?: FixedLengthStreamCtor }).FixedLengthStream;
  const pipe =
    len !== null && /^\d{1,15}$/.test(len) && FixedLengthStream
      ? new FixedLengthStream(Number(len))
      : new TransformStream<Uint8Array, Uint8Array>();
  ctx.waitUntil(
    res.body
      .pipeTo(pipe.writable)
      .catch(() => {
        // the client went away, or the storage failed midway (already logged by the app)
      })
      .finally(close),
  );
  return new Response(pipe.readable, {
    status: res.status,
    statusText: res.statusText,
    headers: res.headers,
  });
}

/**
 * The Durable Object of the tus state (wrangler.toml binding `DSM_TUS`): the KvStore of
 * durable-kv.ts, whose alarm deletes an expired upload — its bytes on the storage and its state —
 * through the same TusService.expireUpload as the Node gateway's sweeper. One object per upload
 * (state + lock), plus the shards of the shared keys (counters, delete journal, sweeper index).
 */
export class TusStateObject extends DurableKvObject {
  constructor(ctx: DurableObjectStateLike, env: WorkerEnv) {
    const { config, state } = workerFromEnv(env);
    if (state.kind !== 'durable-object') {
      throw new Error(`TusStateObject needs cache "durable-object:<binding>" (it is "${config.cache}")`);
    }
    const log = consoleLog(env.DSM_LOG_LEVEL);
    super(ctx, {
      limits: state.limits,
      dueAt: tusKeys.expiresAt,
      retryMs: config.tusLockTtlMs,
      onDue: async (key, local) => {
        const id = tusKeys.uploadOf(key);
        if (id === undefined) return true;
        const client = clientFor(config, env);
        try {
          const debug = env.DSM_LOG_LEVEL === 'debug';
          const name = stateStore(state, log, debug).objectFor(key);
          const kv = stateStore(state, log, debug, { name, kv: local });
          const core = new GatewayCore({ client, kv, config, log });
          const r = await new TusService(core).expireUpload(id);
          // live: the state's expiry moved (its due time with it); locked: try again later
          return r !== 'locked';
        } catch (e) {
          log.warn({ err: e, uploadId: id }, 'expiring a tus upload failed; retrying later');
          return false;
        } finally {
          await client.close().catch(() => {});
        }
      },
    });
  }
}

export default {
  async fetch(req: Request, env: WorkerEnv, ctx: WorkerContext): Promise<Response> {
    let b: ReturnType<typeof build>;
    const pending: Promise<unknown>[] = [];
    const background = (p: Promise<unknown>) => {
      pending.push(p);
      ctx.waitUntil(p.catch(() => {}));
    };
    try {
      b = build(env, background);
    } catch (e) {
      return configProblem(e, req);
    }
    let res: Response;
    try {
      res = await b.app.fetch(req, env, ctx as never);
    } catch (e) {
      // app.onError answers every error; this is a last resort
      ctx.waitUntil(settled(pending).then(() => b.client.close().catch(() => {})));
      b.iso.log.error({ err: e }, 'unhandled error');
      return problemResponse(toProblem(e, new URL(req.url).pathname), req.method);
    }
    return finish(res, b.client, ctx, pending);
  },

  /**
   * Cron Trigger (optional): the sweeper of the Node gateway, walking the index of uploads. With
   * the Durable Object state the objects' alarms already expire uploads; with isolate memory it
   * sees only this isolate's uploads.
   */
  async scheduled(_controller: unknown, env: WorkerEnv, ctx: WorkerContext): Promise<void> {
    const b = build(env);
    ctx.waitUntil(
      b.tus
        .sweep()
        .catch((e) => b.iso.log.warn({ err: e }, 'tus sweep failed'))
        .finally(() => b.client.close().catch(() => {})),
    );
  },
};
