import cluster, { type Worker } from 'node:cluster';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { availableParallelism } from 'node:os';
import { createLogger, type Logger, runNode } from '@dsm/common';
import { messageOf } from '@dsm/common/errors';
import { createKvStore, type KvStore } from '@dsm/kv';
import { serve } from '@hono/node-server';
import type { Hono } from 'hono';
import { AggregatorRegistry, Counter, Gauge, Registry } from 'prom-client';
import { adminAppBase, readiness } from './admin.ts';
import { type GatewayConfig, parseListen } from './config.ts';
import { IpcKvStore, serveKvOverIpc } from './ipc-kv.ts';
import { type RunningGateway, startGateway } from './node.ts';
import { GatewayErrorCode, HttpError } from './problem.ts';
import {
  collectStatus,
  ERROR_RING,
  errorRingOf,
  type RecentError,
  StatusCache,
  type StatusData,
  statusJsonResponse,
  statusPageResponse,
} from './status-page.ts';

/**
 * `gateway.workers`: N gateway processes on one listen address (node:cluster). The primary
 * forks the workers, restarts one that dies (backoff 100 ms doubling to 10 s; a worker that dies
 * 10 times in a row without living 30 s is given up, and when none is left the primary exits 1
 * for its supervisor), forwards SIGTERM/SIGINT as a drain, serves `admin.listen` (metrics summed
 * over the workers, readiness of each) and, when the cache is in-process (`memory:`), holds the
 * one store every worker uses over IPC (ipc-kv.ts). The workers serve HTTP; they share nothing
 * but the cache. `workers: 1` runs the single-process gateway of node.ts (no primary).
 */

/** Env var set on the processes the primary forks. */
const WORKER_ENV = 'DSM_GATEWAY_WORKER';
/** `DSM_GATEWAY_WORKER_HEADER=1`: each worker answers `X-Dsm-Worker: <pid>` (tests, debugging). */
const HEADER_ENV = 'DSM_GATEWAY_WORKER_HEADER';

export const RESTART_BASE_MS = 100;
export const RESTART_MAX_MS = 10_000;
/** A worker that lived this long counts as healthy: its slot's crash count starts again. */
export const RESTART_RESET_MS = 30_000;
export const MAX_QUICK_RESTARTS = 10;
/** How long the primary waits for the workers to drain before it kills them. */
export const DRAIN_MS = 10_000;
const ASK_TIMEOUT_MS = 3000;

/** How many gateway processes a config asks for: `workers`, else one per core. */
export function gatewayWorkerCount(config: Pick<GatewayConfig, 'workers'>): number {
  return config.workers ?? Math.max(1, Math.min(64, availableParallelism()));
}

/** True in a process the gateway's primary forked. */
export function isGatewayWorker(): boolean {
  return cluster.isWorker && process.env[WORKER_ENV] === '1';
}

const inProcessCache = (cache: string) => cache.trim() === '' || cache.trim() === 'memory:';

export interface GatewayClusterOptions {
  log?: Logger;
}

/**
 * `dsm gateway` with more than one worker: in the primary, forks the workers, prints the ready
 * line when every one listens and runs until SIGTERM/SIGINT; in a worker, serves. The workers
 * run this same program (node:cluster re-runs `process.argv`).
 */
export async function runGatewayCluster(config: GatewayConfig, opts: GatewayClusterOptions = {}) {
  const log = opts.log ?? createLogger('gateway');
  if (isGatewayWorker()) return runWorker(config, log);
  // a ready line, a drain on SIGINT/SIGTERM, a stop when the launcher is gone: as every node
  await runNode(
    log,
    async () => {
      const primary = await GatewayPrimary.start(config, log);
      primary.onGiveUp = () => {
        log.fatal('every gateway worker keeps dying: giving up');
        process.exit(1);
      };
      return primary;
    },
    { forceExitMs: DRAIN_MS + 5000, stoppingMessage: 'stopping: draining the workers' },
  );
}

interface Slot {
  index: number;
  worker?: Worker;
  startedAt: number;
  quickDeaths: number;
  timer?: NodeJS.Timeout;
  given?: boolean;
}

type Msg = Record<string, unknown> & { type?: unknown };

/** The primary of a multi-process gateway (see the top of this file). */
export class GatewayPrimary {
  readonly #log: Logger;
  readonly #slots: Slot[] = [];
  readonly #kv: KvStore | undefined;
  readonly #registry = new Registry();
  readonly #restarts: Counter;
  readonly #live: Gauge;
  readonly #asks = new Map<number, { got: Map<number, unknown>; want: number; done: () => void }>();
  #askId = 1;
  #stopping = false;
  #admin: Server | undefined;
  ready: Record<string, unknown> = {};
  onGiveUp: () => void = () => {};

  private constructor(cfg: GatewayConfig, log: Logger) {
    this.#log = log;
    this.#kv = inProcessCache(cfg.cache)
      ? createKvStore(cfg.cache, { memoryMaxKeys: cfg.memoryCacheMaxKeys })
      : undefined;
    this.#restarts = new Counter({
      name: 'dsm_gateway_worker_restarts_total',
      help: 'Gateway worker processes the primary restarted after they died',
      registers: [this.#registry],
    });
    this.#live = new Gauge({
      name: 'dsm_gateway_workers',
      help: 'Gateway worker processes running',
      registers: [this.#registry],
      collect: () => this.#live.set(this.#slots.filter((s) => s.worker?.isConnected()).length),
    });
  }

  static async start(cfg: GatewayConfig, log: Logger): Promise<GatewayPrimary> {
    const p = new GatewayPrimary(cfg, log);
    const n = gatewayWorkerCount(cfg);
    try {
      const ports = await Promise.all(
        Array.from({ length: n }, (_, index) => {
          const slot: Slot = { index, startedAt: 0, quickDeaths: 0 };
          p.#slots.push(slot);
          return p.#fork(slot);
        }),
      );
      const { host } = parseListen(cfg.listen);
      const shown = host.includes(':') ? `[${host}]` : host;
      const url = `http://${shown === '0.0.0.0' ? '127.0.0.1' : shown}:${ports[0]}`;
      let adminUrl: string | undefined;
      if (cfg.admin.listen) {
        const a = await listen(p.#adminApp().fetch, cfg.admin.listen);
        p.#admin = a.server;
        adminUrl = a.url;
      }
      p.ready = {
        role: 'gateway',
        listen: `${host}:${ports[0]}`,
        url,
        ...(adminUrl ? { admin: adminUrl, adminUrl } : {}),
        workers: p.pids(),
      };
      log.info({ url, workers: n, cache: p.#kv ? 'in the primary (IPC)' : 'shared' }, 'gateway listening');
      return p;
    } catch (e) {
      await p.close();
      throw e;
    }
  }

  /** The pids of the workers running now. */
  pids(): number[] {
    return this.#slots.flatMap((s) =>
      s.worker?.process.pid && !s.worker.isDead() ? [s.worker.process.pid] : [],
    );
  }

  /** Forks the slot's worker; resolves with its port once it listens, rejects if it dies first. */
  #fork(slot: Slot): Promise<number> {
    const worker = cluster.fork({ [WORKER_ENV]: '1' });
    slot.worker = worker;
    slot.startedAt = Date.now();
    if (this.#kv) serveKvOverIpc(worker, this.#kv);
    const pid = worker.process.pid ?? 0;
    // a send on the channel of a worker that just died emits 'error': not a reason to stop
    worker.on('error', (e) => this.#log.debug({ worker: pid, err: e }, 'gateway worker channel error'));
    return new Promise<number>((resolve, reject) => {
      let listening = false;
      let failure = '';
      worker.on('message', (m: Msg) => {
        if (typeof m !== 'object' || m === null) return;
        if (m.type === 'dsm:ready' && typeof m.port === 'number') {
          listening = true;
          resolve(m.port);
        } else if (m.type === 'dsm:failed') failure = String(m.message ?? '');
        else if (m.type === 'dsm:answer' && typeof m.id === 'number') {
          const a = this.#asks.get(m.id);
          if (a) {
            a.got.set(pid, m.value);
            if (a.got.size >= a.want) a.done();
          }
        }
      });
      worker.once('exit', (code, signal) => {
        if (!listening)
          reject(
            new Error(
              `gateway worker ${pid} exited (${signal ?? code}) before it listened${failure ? `: ${failure}` : ''}`,
            ),
          );
        if (slot.worker === worker) slot.worker = undefined;
        this.#died(slot, pid, code, signal);
      });
    });
  }

  #died(slot: Slot, pid: number, code: number | null, signal: string | null): void {
    if (this.#stopping) return;
    if (Date.now() - slot.startedAt >= RESTART_RESET_MS) slot.quickDeaths = 0;
    if (slot.quickDeaths >= MAX_QUICK_RESTARTS) {
      slot.given = true;
      this.#log.error(
        { worker: pid, code, signal, slot: slot.index },
        'gateway worker keeps dying: not restarted',
      );
      if (this.#slots.every((s) => s.given)) this.onGiveUp();
      return;
    }
    const delay = Math.min(RESTART_MAX_MS, RESTART_BASE_MS * 2 ** slot.quickDeaths);
    slot.quickDeaths++;
    this.#log.warn(
      { worker: pid, code, signal, slot: slot.index, restartInMs: delay },
      'gateway worker died',
    );
    slot.timer = setTimeout(() => {
      slot.timer = undefined;
      if (this.#stopping) return;
      this.#restarts.inc();
      this.#fork(slot).catch((e) => this.#log.warn({ err: e }, 'gateway worker restart failed'));
    }, delay);
  }

  /**
   * Asks every live worker (or the first `limit`) `type`; the answers by pid (workers that do
   * not answer in time are left out).
   */
  async #ask(type: string, limit = Number.POSITIVE_INFINITY): Promise<Map<number, unknown>> {
    const workers = this.#slots.flatMap((s) => (s.worker?.isConnected() ? [s.worker] : [])).slice(0, limit);
    const id = this.#askId++;
    const got = new Map<number, unknown>();
    if (workers.length === 0) return got;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => done(), ASK_TIMEOUT_MS);
      const done = () => {
        clearTimeout(timer);
        this.#asks.delete(id);
        resolve();
      };
      this.#asks.set(id, { got, want: workers.length, done });
      for (const w of workers) {
        try {
          w.send({ type, id });
        } catch {
          // gone meanwhile: it will not answer
        }
      }
    });
    return got;
  }

  /** `admin.listen` of a multi-process gateway: the workers' readiness and summed metrics. */
  #adminApp(): Hono {
    const app = adminAppBase();
    app.get('/readyz', async () => {
      const answers = await this.#ask('dsm:readyz');
      const workers = [...answers].map(([pid, r]) => ({ pid, ...(r as object) })) as ({
        pid: number;
        ready?: boolean;
      } & Record<string, unknown>)[];
      const expected = this.#slots.filter((s) => !s.given).length;
      const body = { workers, expected };
      if (!workers.some((w) => w.ready === true)) {
        throw new HttpError(503, GatewayErrorCode.NOT_READY, 'no gateway worker is ready', { extra: body });
      }
      return Response.json({ status: 'ready', ...body }, { headers: { 'Cache-Control': 'no-store' } });
    });
    app.get('/metrics', async () => {
      const answers = await this.#ask('dsm:metrics');
      const sets = [...answers.values()].filter(Array.isArray) as object[][];
      const summed = sets.length > 0 ? await AggregatorRegistry.aggregate(sets).metrics() : '';
      const own = await this.#registry.metrics();
      return new Response(`${summed}${summed && !summed.endsWith('\n') ? '\n' : ''}${own}`, {
        headers: { 'Content-Type': this.#registry.contentType, 'Cache-Control': 'no-store' },
      });
    });
    // the cluster's view from one worker (its own 1 s cache), the last errors of every worker
    const status = new StatusCache(async () => {
      const [one, errs] = await Promise.all([this.#ask('dsm:status', 1), this.#ask('dsm:errors')]);
      const data = [...one.values()][0] as StatusData | null | undefined;
      if (!data || typeof data !== 'object') {
        throw new HttpError(503, GatewayErrorCode.NOT_READY, 'no gateway worker answered');
      }
      const errors = [...errs.values()]
        .flatMap((e) => (Array.isArray(e) ? (e as RecentError[]) : []))
        .sort((a, b) => b.time - a.time)
        .slice(0, ERROR_RING);
      return { ...data, errors };
    });
    app.get('/status', () => statusPageResponse());
    app.get('/status.json', async () => statusJsonResponse(await status.get()));
    return app;
  }

  /** Drains every worker (they finish what they serve), then stops the admin listener and cache. */
  async close(): Promise<void> {
    this.#stopping = true;
    const waits: Promise<void>[] = [];
    for (const s of this.#slots) {
      if (s.timer) clearTimeout(s.timer);
      const w = s.worker;
      if (!w || w.isDead()) continue;
      waits.push(
        new Promise<void>((resolve) => {
          const kill = setTimeout(() => w.process.kill('SIGKILL'), DRAIN_MS);
          w.once('exit', () => {
            clearTimeout(kill);
            resolve();
          });
          if (w.isConnected()) w.send({ type: 'dsm:drain' });
          else w.process.kill('SIGTERM');
        }),
      );
    }
    await Promise.all(waits);
    const admin = this.#admin;
    if (admin)
      await new Promise<void>((resolve) => {
        admin.close(() => resolve());
        admin.closeAllConnections();
      });
    await this.#kv?.close();
  }
}

/** A worker: the gateway of node.ts without the admin listener, on the primary's cache when in-process. */
async function runWorker(config: GatewayConfig, log: Logger): Promise<void> {
  const send = (m: Msg) => {
    if (process.connected) process.send?.(m);
  };
  const kv = inProcessCache(config.cache) ? new IpcKvStore() : undefined;
  let gw: RunningGateway;
  try {
    gw = await startGateway(
      { ...config, admin: { ...config.admin, listen: '' } },
      { log, kv, workerHeader: process.env[HEADER_ENV] === '1' ? String(process.pid) : undefined },
    );
  } catch (e) {
    log.fatal({ err: e }, 'gateway worker start-up failed');
    send({ type: 'dsm:failed', message: messageOf(e) });
    await kv?.close();
    process.exit(1);
  }
  let stopping = false;
  const stop = async (why: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ why }, 'gateway worker draining');
    setTimeout(() => process.exit(1), DRAIN_MS).unref();
    try {
      await gw.close();
      await kv?.close();
    } finally {
      process.exit(0);
    }
  };
  const statusCache = new StatusCache(() =>
    collectStatus(gw.core, {
      trackers: config.trackers,
      idServers: config.admin.idServers,
      nodeAdmins: config.admin.nodeAdmins,
    }),
  );
  process.on('message', (m: Msg) => {
    if (typeof m !== 'object' || m === null) return;
    if (m.type === 'dsm:drain') void stop('the primary asked');
    else if (m.type === 'dsm:readyz')
      void readiness(gw.core).then(
        (value) => send({ type: 'dsm:answer', id: m.id, value }),
        (e) => send({ type: 'dsm:answer', id: m.id, value: { ready: false, error: messageOf(e) } }),
      );
    else if (m.type === 'dsm:status')
      void statusCache.get().then(
        (value) => send({ type: 'dsm:answer', id: m.id, value }),
        () => send({ type: 'dsm:answer', id: m.id, value: null }),
      );
    else if (m.type === 'dsm:errors')
      send({ type: 'dsm:answer', id: m.id, value: errorRingOf(gw.core).list() });
    else if (m.type === 'dsm:metrics')
      void gw.registry.getMetricsAsJSON().then(
        (value) => send({ type: 'dsm:answer', id: m.id, value }),
        () => send({ type: 'dsm:answer', id: m.id, value: null }),
      );
  });
  // systemd (KillMode=control-group) or a terminal's Ctrl-C signal every process: drain too
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
  send({ type: 'dsm:ready', port: gw.port });
}

async function listen(
  fetch: (req: Request) => Response | Promise<Response>,
  address: string,
): Promise<{ server: Server; url: string }> {
  const { host, port } = parseListen(address);
  const server = await new Promise<Server>((resolve, reject) => {
    const s = serve({ fetch, port, hostname: host }, () => resolve(s as Server));
    s.once('error', reject);
  });
  const shown = host.includes(':') ? `[${host}]` : host;
  const bound = (server.address() as AddressInfo).port;
  return { server, url: `http://${shown === '0.0.0.0' ? '127.0.0.1' : shown}:${bound}` };
}
