import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Cluster, type ClusterOptions } from '@dsm/cli';
import { DsmClient } from '@dsm/client';
import { nodeTransport } from '@dsm/client/node';
import { parseAddress } from '@dsm/packets';
import { freePortRange, mariadbBackend } from '@dsm/testkit';

export type Backend = 'embedded' | 'mysql';
export const BACKENDS: Backend[] = ['embedded', 'mysql'];

export { collect, freePortRange, patternChunks, patternSource } from '@dsm/testkit';

export interface TestCluster {
  cluster: Cluster;
  client: DsmClient;
  dir: string;
  backend: Backend;
  databases: Record<'tracker' | 'storage' | 'id', string>;
  stop(): Promise<void>;
  waitActive(count: number, timeoutMs?: number): Promise<void>;
}

/**
 * Starts a real cluster (separate node processes, the same launcher as `dsm up`) on either the
 * embedded defaults or MariaDB + Redis (fresh databases, removed afterwards).
 */
export async function startTestCluster(
  backend: Backend,
  o: Partial<ClusterOptions> = {},
): Promise<TestCluster> {
  const dir = mkdtempSync(join(tmpdir(), 'dsm-test-'));
  const trackers = o.trackers ?? 2;
  const ids = o.ids ?? 1;
  const groups = o.groups ?? ['group001', 'group002'];
  const per = o.storagesPerGroup ?? 2;
  const base = await freePortRange(trackers + ids + groups.length * per);
  let databases: TestCluster['databases'] = {
    tracker: `sqlite:${join(dir, 'tracker.db')}`,
    storage: `sqlite:${join(dir, 'storage.db')}`,
    id: `sqlite:${join(dir, 'id.db')}`,
  };
  let cache: string | undefined;
  // MariaDB + Redis: fresh databases and a fresh key prefix, removed by stop()
  const store = backend === 'mysql' ? mariadbBackend() : undefined;
  if (store) {
    await store.setup();
    databases = {
      tracker: store.database('tracker'),
      storage: store.database('storage'),
      id: store.database('id'),
    };
    cache = store.cacheUrl();
  }
  const cluster = await Cluster.start({
    dir,
    trackers,
    ids,
    groups,
    storagesPerGroup: per,
    trackerBasePort: base,
    idBasePort: base + trackers,
    storageBasePort: base + trackers + ids,
    beatIntervalMs: 300,
    beatTimeoutMs: 1500,
    databases,
    cache,
    env: { DSM_LOG_LEVEL: process.env.DSM_LOG_LEVEL ?? 'warn' },
    ...o,
  });
  const client = new DsmClient({
    trackers: cluster.addresses('tracker').map(parseAddress),
    transport: nodeTransport,
    locateCacheMs: 0,
    ioTimeoutMs: 10_000,
  });
  const t: TestCluster = {
    cluster,
    client,
    dir,
    backend,
    databases,
    async waitActive(count, timeoutMs = 15_000) {
      const deadline = Date.now() + timeoutMs;
      let seen = 0;
      while (Date.now() < deadline) {
        try {
          const statuses = await Promise.all(
            cluster.addresses('tracker').map((a) => client.tracker.status(parseAddress(a))),
          );
          seen = Math.min(
            ...statuses.map(
              (s) => s.groups.flatMap((g) => g.storages).filter((x) => x.state === 'ACTIVE').length,
            ),
          );
          if (seen >= count) return;
        } catch {
          // trackers still starting
        }
        await new Promise((r) => setTimeout(r, 100));
      }
      throw new Error(`only ${seen} of ${count} storages became ACTIVE on every tracker`);
    },
    async stop() {
      await client.close();
      await cluster.stop();
      await store?.cleanup();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return t;
}
