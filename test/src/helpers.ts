import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Cluster, type ClusterOptions } from '@dsm/cli';
import { DsmClient } from '@dsm/client';
import { nodeTransport } from '@dsm/client/node';
import { parseAddress } from '@dsm/packets';
import { Redis } from 'ioredis';
import mysql from 'mysql2/promise';

export const MYSQL = { host: '127.0.0.1', port: 3306, user: 'root' };
export const REDIS_URL = 'redis://127.0.0.1:6379';

export type Backend = 'embedded' | 'mysql';
export const BACKENDS: Backend[] = ['embedded', 'mysql'];

/** Fails (never skips) when MariaDB is not there. */
export async function mysqlAdmin(): Promise<mysql.Connection> {
  try {
    return await mysql.createConnection({ ...MYSQL, connectTimeout: 3000 });
  } catch (e) {
    throw new Error(
      `MariaDB is required at ${MYSQL.host}:${MYSQL.port} (user root, no password) and does not answer: ${(e as Error).message}. ` +
        'Start it (bash .ci/services.sh) and run the tests again.',
    );
  }
}

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/** A base port with `n` free consecutive ports after it (tests never use the default ports). */
export async function freePortRange(n: number): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 30000 + Math.floor(Math.random() * 25000);
    let ok = true;
    for (let i = 0; i < n && ok; i++) ok = await canListen(base + i);
    if (ok) return base;
  }
  throw new Error('no free port range found');
}

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
  const tag = `dsm_t_${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;
  let databases: TestCluster['databases'] = {
    tracker: `sqlite:${join(dir, 'tracker.db')}`,
    storage: `sqlite:${join(dir, 'storage.db')}`,
    id: `sqlite:${join(dir, 'id.db')}`,
  };
  let cache: string | undefined;
  if (backend === 'mysql') {
    const admin = await mysqlAdmin();
    await admin.end();
    const url = (db: string) => `mysql://root@127.0.0.1:3306/${tag}_${db}`;
    databases = { tracker: url('tracker'), storage: url('storage'), id: url('id') };
    cache = `${REDIS_URL}/0?prefix=${tag}:`;
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
      if (backend === 'mysql') {
        const admin = await mysqlAdmin();
        for (const db of ['tracker', 'storage', 'id'])
          await admin.query(`DROP DATABASE IF EXISTS \`${tag}_${db}\``);
        await admin.end();
        const redis = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1 });
        const keys = await redis.keys(`${tag}:*`);
        if (keys.length) await redis.del(...keys);
        redis.disconnect();
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return t;
}

/** An async source of `size` pseudo-random bytes (deterministic per seed), in chunks. */
export function patternSource(size: number, seed = 1, chunk = 256 * 1024) {
  return {
    size,
    open: () => patternChunks(size, seed, chunk),
  };
}

export async function* patternChunks(size: number, seed = 1, chunk = 256 * 1024): AsyncGenerator<Uint8Array> {
  let x = seed >>> 0 || 1;
  let left = size;
  while (left > 0) {
    const n = Math.min(chunk, left);
    const b = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      b[i] = x & 0xff;
    }
    left -= n;
    yield b;
  }
}

export async function collect(stream: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of stream) parts.push(Buffer.from(c));
  return Buffer.concat(parts);
}
