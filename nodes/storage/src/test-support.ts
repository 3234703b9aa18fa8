import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Pool, RemoteError, StorageClient } from '@dsm/client';
import { nodeTransport } from '@dsm/client/node';
import { createDb, type DbHandle } from '@dsm/db';
import { type Backend, rejection } from '@dsm/testkit';

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
