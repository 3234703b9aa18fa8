import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Pool, RemoteError, StorageClient } from '@dsm/client';
import { nodeTransport } from '@dsm/client/node';
import { type Logger, parseConfig } from '@dsm/common';
import { createDb, type DbHandle } from '@dsm/db';
import type { Address } from '@dsm/packets';
import { type Backend, rejection } from '@dsm/testkit';
import { configSchema } from './config.ts';
import { type StorageNode, startStorage } from './storage.ts';

/**
 * Helpers for this package's tests (not exported): an in-memory id source and the set-up and
 * tear-down of a suite of storage nodes on one backend. Backends, the raw frame connection and
 * the other generic test support are in @dsm/testkit.
 */

/** An id source like one id server: a counter per key. */
export function idStub(start = 114_700): {
  source: (key: string) => Promise<number>;
  keys: Map<string, number>;
} {
  const keys = new Map<string, number>();
  return {
    keys,
    source: async (key) => {
      const n = keys.get(key) ?? start;
      keys.set(key, n + 1);
      return n;
    },
  };
}

/** A scratch folder and a backend that is set up: the one database of a suite's nodes. */
export async function openScratch(
  makeBackend: () => Backend,
  dirPrefix: string,
): Promise<{ dir: string; backend: Backend; dbUrl: string }> {
  const dir = mkdtempSync(join(tmpdir(), dirPrefix));
  const backend = makeBackend();
  await backend.setup();
  return { dir, backend, dbUrl: backend.database() };
}

/** What a suite checks its nodes with: a database handle and a storage client. */
export function openChecks(dbUrl: string): { dbh: DbHandle; pool: Pool; sc: StorageClient } {
  const dbh = createDb(dbUrl);
  const pool = new Pool({ transport: nodeTransport, ioTimeoutMs: 10_000 });
  return { dbh, pool, sc: new StorageClient(pool) };
}

/**
 * Closes what a suite opened, in the order given (any may be missing when beforeAll failed
 * early), then cleans the backend up and removes the scratch folder.
 */
export async function closeSuite(
  closables: readonly ({ close(): Promise<unknown> } | undefined)[],
  backend: Backend | undefined,
  dir: string,
): Promise<void> {
  for (const c of closables) await c?.close();
  await backend?.cleanup();
  if (dir) rmSync(dir, { recursive: true, force: true });
}

/** The error reply `p` fails with; success or any other error fails the test. */
export async function errorReplyOf(p: Promise<unknown>): Promise<RemoteError> {
  const e = await rejection(p);
  if (e instanceof RemoteError) return e;
  throw e;
}

/** Two members of one group (one database, a store folder each) and what a suite checks them with. */
export interface MemberPair {
  dir: string;
  backend: Backend;
  a: StorageNode;
  b: StorageNode;
  dbh: DbHandle;
  pool: Pool;
  sc: StorageClient;
  addrA(): Address;
  addrB(): Address;
  close(): Promise<void>;
}

/** Starts a MemberPair on a fresh backend (`extra`: more storage config for both). */
export async function startMemberPair(
  makeBackend: () => Backend,
  dirPrefix: string,
  o: { log: Logger; idSource: (key: string) => Promise<number>; extra?: Record<string, unknown> },
): Promise<MemberPair> {
  const { dir, backend, dbUrl } = await openScratch(makeBackend, dirPrefix);
  const start = (hostname: string) =>
    startStorage(
      parseConfig(
        configSchema,
        {
          listen: '127.0.0.1:0',
          hostname,
          storePaths: ['store1'],
          trackers: [],
          database: dbUrl,
          cache: backend.cache,
          ...o.extra,
        },
        dir,
      ),
      { log: o.log, idSource: o.idSource, cachePrefix: backend.cachePrefix },
    );
  const a = await start('store-a');
  const b = await start('store-b');
  const { dbh, pool, sc } = openChecks(dbUrl);
  return {
    dir,
    backend,
    a,
    b,
    dbh,
    pool,
    sc,
    addrA: () => ({ host: '127.0.0.1', port: a.port }),
    addrB: () => ({ host: '127.0.0.1', port: b.port }),
    close: () => closeSuite([pool, a, b, dbh], backend, dir),
  };
}
