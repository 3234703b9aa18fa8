import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DsmClient } from '@dsm/client';
import { nodeTransport } from '@dsm/client/node';
import { Cluster, type ClusterOptions, portCount, until } from '@dsm/cluster';
import { parseAddress } from '@dsm/packets';
import { type Backend, type BackendName, testBackend } from './backends.ts';
import { freePortRange } from './util.ts';

export interface TestCluster {
  cluster: Cluster;
  /** A client through every tracker (no locate cache). */
  client: DsmClient;
  dir: string;
  backend: BackendName;
  /** The backend the nodes use (its `cacheUrl(sub)` gives more prefixes that `stop()` cleans). */
  store: Backend;
  databases: Record<'tracker' | 'storage' | 'id', string>;
  /** Waits until every tracker lists `count` ACTIVE storages (default: all of the cluster's). */
  waitActive(count?: number, timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
}

/**
 * A real cluster for tests: separate node processes started by the launcher of `dsm up`
 * (@dsm/cluster), on ports from one free range (`basePort`), on either backend (SQLite files in
 * the cluster folder + in-process cache, or fresh MariaDB databases + a fresh Redis prefix,
 * removed by `stop()`). Defaults: 2 trackers, 1 id server, 2 groups of 2 storages, fast beats.
 */
export async function startTestCluster(
  backend: BackendName,
  o: Partial<ClusterOptions> = {},
): Promise<TestCluster> {
  const dir = mkdtempSync(join(tmpdir(), 'dsm-test-'));
  const store = testBackend(backend);
  let cluster: Cluster | undefined;
  try {
    await store.setup();
    const mariadb = backend === 'mariadb+redis';
    const databases: TestCluster['databases'] = mariadb
      ? { tracker: store.database('tracker'), storage: store.database('storage'), id: store.database('id') }
      : {
          tracker: `sqlite:${join(dir, 'tracker.db')}`,
          storage: `sqlite:${join(dir, 'storage.db')}`,
          id: `sqlite:${join(dir, 'id.db')}`,
        };
    const shape = { trackers: 2, ids: 1, groups: ['group001', 'group002'], storagesPerGroup: 2, ...o };
    cluster = await Cluster.start({
      dir,
      basePort: await freePortRange(portCount(shape)),
      beatIntervalMs: 300,
      beatTimeoutMs: 1500,
      databases,
      cache: mariadb ? store.cacheUrl() : undefined,
      env: { DSM_LOG_LEVEL: process.env.DSM_LOG_LEVEL ?? 'warn' },
      ...shape,
    });
    const started = cluster;
    const client = new DsmClient({
      trackers: started.addresses('tracker').map(parseAddress),
      transport: nodeTransport,
      locateCacheMs: 0,
      ioTimeoutMs: 10_000,
    });
    let seen = 0;
    return {
      cluster: started,
      client,
      dir,
      backend,
      store,
      databases,
      async waitActive(count = started.addresses('storage').length, timeoutMs = 15_000) {
        const active = async () => {
          const statuses = await Promise.all(
            started.addresses('tracker').map((a) => client.tracker.status(parseAddress(a))),
          );
          seen = Math.min(
            ...statuses.map(
              (s) => s.groups.flatMap((g) => g.storages).filter((x) => x.state === 'ACTIVE').length,
            ),
          );
          return seen >= count;
        };
        await until(active, timeoutMs, 100, 'storages to become ACTIVE').catch((e: Error) => {
          throw new Error(`only ${seen} of ${count} storages became ACTIVE on every tracker: ${e.message}`);
        });
      },
      async stop() {
        await client.close();
        await started.stop();
        await store.cleanup();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (e) {
    await cluster?.stop();
    await store.cleanup();
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}
