import type { BlockList } from 'node:net';
import { DsmError, ErrorCode, type Logger, messageOf, parseListen } from '@dsm/common';
import type { DbRole } from '@dsm/db';
import { type CreateKvStoreOptions, createKvStore, type KvStore } from '@dsm/kv';
import { formatAddress } from '@dsm/packets';
import { sql } from 'kysely';
import {
  type AdminListener,
  holdsAddress,
  type Readiness,
  type ReadyCheck,
  startAdminListener,
} from './admin.ts';
import { Cleanups } from './cleanups.ts';
import { type NodeDatabase, type OpenDatabaseOptions, openDatabase } from './database.ts';
import { NodeMetrics } from './metrics.ts';
import { ProtocolServer, type ProtocolServerOptions } from './protocol-server.ts';

export interface ListenOptions extends Omit<ProtocolServerOptions, 'log' | 'metrics'> {
  /** `host:port` from the node's config (port 0 = any free port). */
  listen: string;
}

export interface Listener {
  server: ProtocolServer;
  host: string;
  /** The port actually bound. */
  port: number;
  /** `host:port` as bound (`[v6]:port` for IPv6). */
  listen: string;
}

/** What a node's start function wires its parts with; everything opened here is closed by `close()`. */
export interface NodeKit {
  log: Logger;
  /** Registers a cleanup; cleanups run last-registered-first on a failed start or on close. */
  defer(what: string, fn: () => unknown): void;
  /** The node's database with the one retry policy (see openDatabase). */
  openDatabase(role: DbRole, url: string, opts?: Omit<OpenDatabaseOptions, 'log'>): Promise<NodeDatabase>;
  /** `memory:` or `redis://…`. */
  openCache(url: string, opts?: CreateKvStoreOptions): KvStore;
  /** The node's protocol listener (the one place every node's server is created). */
  listen(opts: ListenOptions): Promise<Listener>;
  /**
   * The node's metrics (metrics.ts): the listener reports requests, bytes and connections to
   * it; the node adds its own with `metrics.counter` / `metrics.gauge`.
   */
  metrics: NodeMetrics;
  /**
   * The admin listener (admin.ts) on `admin.listen` (empty = none, returns null): `/metrics`,
   * `/healthz`, `/readyz`. Readiness checks the database and cache opened through this kit,
   * then the node's own `checks`; `admin.vips` adds `dsm_node_vip_held`.
   */
  serveAdmin(
    admin: { listen: string; vips?: readonly string[] },
    opts: { allow: BlockList | null; checks?: Readiness },
  ): Promise<AdminListener | null>;
}

/**
 * Starts a node: `build` wires the node's parts with `kit`; if it throws, everything opened so
 * far is closed in reverse order and the error is passed on. The result gets a `close()` that
 * runs the same cleanups (once).
 */
export async function startNode<T extends object>(
  log: Logger,
  build: (kit: NodeKit) => Promise<T>,
): Promise<T & { close(): Promise<void> }> {
  const cleanups = new Cleanups(log);
  const metrics = new NodeMetrics();
  const baseChecks: (() => Promise<ReadyCheck>)[] = [];
  const kit: NodeKit = {
    log,
    metrics,
    defer: (what, fn) => cleanups.defer(what, fn),
    async openDatabase(role, url, opts = {}) {
      const db = await openDatabase(role, url, { ...opts, log });
      cleanups.defer('database', () => db.close());
      baseChecks.push(() =>
        check('database', async () => {
          await db.ready();
          await sql`select 1`.execute(db.db);
        }),
      );
      return db;
    },
    openCache(url, opts) {
      const kv = createKvStore(url, opts);
      cleanups.defer('cache', () => kv.close());
      baseChecks.push(() => check('cache', () => kv.get('dsm:readyz')));
      return kv;
    },
    async listen(opts) {
      const { listen, ...rest } = opts;
      const { host, port } = parseListen(listen);
      metrics.setRole(opts.name);
      const server = new ProtocolServer({ ...rest, log, metrics });
      let bound: { port: number };
      try {
        bound = await server.listen(port, host);
      } catch (e) {
        throw new DsmError(ErrorCode.CONFIG, `cannot listen on ${listen}: ${messageOf(e)}`, undefined, {
          cause: e,
        });
      }
      cleanups.defer('listener', () => server.close());
      metrics.gauge('dsm_node_requests_in_flight', 'Protocol requests being handled now', [], (g) =>
        g.set(server.inFlight),
      );
      return { server, host, port: bound.port, listen: formatAddress({ host, port: bound.port }) };
    },
    async serveAdmin({ listen, vips = [] }, opts) {
      if (!listen) return null;
      if (vips.length > 0)
        metrics.gauge(
          'dsm_node_vip_held',
          'Whether this host holds the virtual IP (1) or not (0)',
          ['vip'],
          (g) => {
            for (const vip of vips) g.set({ vip }, holdsAddress(vip) ? 1 : 0);
          },
        );
      const ready: Readiness = async () => [
        ...(await Promise.all(baseChecks.map((c) => c()))),
        ...(opts.checks ? await opts.checks() : []),
      ];
      const admin = await startAdminListener({ listen, metrics, ready, allow: opts.allow, log });
      cleanups.defer('admin listener', () => admin.close());
      log.info({ admin: admin.url }, 'admin listener up');
      return admin;
    },
  };
  try {
    const node = await build(kit);
    return Object.assign(node, { close: () => cleanups.run() });
  } catch (e) {
    await cleanups.run();
    throw e;
  }
}

async function check(name: string, probe: () => Promise<unknown>): Promise<ReadyCheck> {
  try {
    await probe();
    return { name, ok: true };
  } catch (e) {
    return { name, ok: false, error: messageOf(e) };
  }
}
