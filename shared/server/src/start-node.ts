import { DsmError, ErrorCode, type Logger, messageOf, parseListen } from '@dsm/common';
import type { DbRole } from '@dsm/db';
import { type CreateKvStoreOptions, createKvStore, type KvStore } from '@dsm/kv';
import { formatAddress } from '@dsm/packets';
import { Cleanups } from './cleanups.ts';
import { type NodeDatabase, type OpenDatabaseOptions, openDatabase } from './database.ts';
import { ProtocolServer, type ProtocolServerOptions } from './protocol-server.ts';

export interface ListenOptions extends Omit<ProtocolServerOptions, 'log'> {
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
  const kit: NodeKit = {
    log,
    defer: (what, fn) => cleanups.defer(what, fn),
    async openDatabase(role, url, opts = {}) {
      const db = await openDatabase(role, url, { ...opts, log });
      cleanups.defer('database', () => db.close());
      return db;
    },
    openCache(url, opts) {
      const kv = createKvStore(url, opts);
      cleanups.defer('cache', () => kv.close());
      return kv;
    },
    async listen(opts) {
      const { listen, ...rest } = opts;
      const { host, port } = parseListen(listen);
      const server = new ProtocolServer({ ...rest, log });
      let bound: { port: number };
      try {
        bound = await server.listen(port, host);
      } catch (e) {
        throw new DsmError(ErrorCode.CONFIG, `cannot listen on ${listen}: ${messageOf(e)}`, undefined, {
          cause: e,
        });
      }
      cleanups.defer('listener', () => server.close());
      return { server, host, port: bound.port, listen: formatAddress({ host, port: bound.port }) };
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
