import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Cluster, type ClusterOptions } from '@dsm/cli';
import { createKvStore, type KvStore } from '@dsm/kv';
import { parseAddress } from '@dsm/packets';
import { freePortRange } from '@dsm/testkit';
import { Redis } from 'ioredis';
import mysql from 'mysql2/promise';
import { type GatewayConfigInput, parseGatewayConfig } from './config.ts';
import { type RunningGateway, startGateway } from './node.ts';

// A cluster for gateway tests, started by the same launcher as `dsm up` and the whole-cluster
// tests (test/src/helpers.ts's startTestCluster, which @dsm/test does not export yet).

export const MYSQL = { host: '127.0.0.1', port: 3306, user: 'root' };
export const REDIS_URL = 'redis://127.0.0.1:6379';
export type Backend = 'embedded' | 'mysql';

export const run = promisify(execFile);

/** Deterministic pseudo-random bytes. */
export { patternBytes } from '@dsm/testkit';

async function mysqlAdmin(): Promise<mysql.Connection> {
  try {
    return await mysql.createConnection({ ...MYSQL, connectTimeout: 3000 });
  } catch (e) {
    throw new Error(
      `MariaDB is required at ${MYSQL.host}:${MYSQL.port} (root, no password): ${(e as Error).message}`,
    );
  }
}

export interface Stack {
  cluster: Cluster;
  dir: string;
  backend: Backend;
  /** Gateway KV URL: memory (embedded) or a Redis prefix unique to this stack. */
  cacheUrl: string;
  gateway: RunningGateway;
  /** Starts another gateway on the same cluster (sharing `kv` when given). */
  startGateway(cfg?: GatewayConfigInput, kv?: KvStore): Promise<RunningGateway>;
  /** Regular files under the group data folders (committed files and partials), relative. */
  dataFiles(): string[];
  stop(): Promise<void>;
}

export async function startStack(
  backend: Backend,
  gw: GatewayConfigInput = {},
  o: Partial<ClusterOptions> = {},
): Promise<Stack> {
  const dir = mkdtempSync(join(tmpdir(), 'dsm-gw-test-'));
  const groups = o.groups ?? ['group001'];
  const per = o.storagesPerGroup ?? 2;
  const trackers = o.trackers ?? 1;
  const base = await freePortRange(trackers + 1 + groups.length * per);
  const tag = `dsm_t_${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;
  let databases: ClusterOptions['databases'];
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
    ids: 1,
    groups,
    storagesPerGroup: per,
    trackerBasePort: base,
    idBasePort: base + trackers,
    storageBasePort: base + trackers + 1,
    beatIntervalMs: 300,
    beatTimeoutMs: 1500,
    databases,
    cache,
    env: { DSM_LOG_LEVEL: process.env.DSM_LOG_LEVEL ?? 'warn' },
    ...o,
  });
  const cacheUrl = backend === 'mysql' ? `${REDIS_URL}/0?prefix=${tag}:gw:` : 'memory:';
  const gateways: RunningGateway[] = [];
  const startOne = async (cfg: GatewayConfigInput = gw, kv?: KvStore) => {
    const g = await startGateway(
      parseGatewayConfig({
        listen: '127.0.0.1:0',
        trackers: cluster.addresses('tracker'),
        cache: cacheUrl,
        statCacheMs: 0,
        locateCacheMs: 0,
        admin: { listen: '127.0.0.1:0' },
        ...cfg,
      }),
      { kv },
    );
    gateways.push(g);
    return g;
  };
  const gateway = await startOne(gw);
  // every storage ACTIVE on every tracker before the first upload
  const want = groups.length * per;
  const deadline = Date.now() + 20_000;
  for (;;) {
    let seen = 0;
    try {
      const all = await Promise.all(
        cluster.addresses('tracker').map((a) => gateway.client.tracker.status(parseAddress(a))),
      );
      seen = Math.min(
        ...all.map((st) => st.groups.flatMap((g) => g.storages).filter((x) => x.state === 'ACTIVE').length),
      );
    } catch {
      // trackers still starting
    }
    if (seen >= want) break;
    if (Date.now() > deadline) throw new Error(`only ${seen} of ${want} storages became ACTIVE`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    cluster,
    dir,
    backend,
    cacheUrl,
    gateway,
    startGateway: startOne,
    dataFiles() {
      const out: string[] = [];
      const walk = (d: string, rel: string) => {
        for (const name of readdirSync(d)) {
          const p = join(d, name);
          const st = statSync(p);
          if (st.isDirectory()) walk(p, `${rel}${name}/`);
          else if (!name.endsWith('.lock')) out.push(`${rel}${name}`);
        }
      };
      walk(join(dir, 'data'), '');
      return out.sort();
    },
    async stop() {
      for (const g of gateways) await g.close();
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
}

/** A Redis-backed KvStore with a fresh prefix (fails with a clear message when Redis is down). */
export async function redisKv(prefix: string): Promise<KvStore> {
  const kv = createKvStore(`${REDIS_URL}/0?prefix=${prefix}`);
  try {
    await kv.get('probe');
  } catch (e) {
    throw new Error(`Redis is required at ${REDIS_URL}: ${(e as Error).message}`);
  }
  return kv;
}

/** curl with `-s -S`; returns stdout/stderr (exit code ≠ 0 throws unless `allowFail`). */
export async function curl(args: string[], opts: { allowFail?: boolean; encoding?: 'buffer' } = {}) {
  try {
    const r = await run('curl', ['-sS', ...args], {
      maxBuffer: 256 * 1024 * 1024,
      encoding: opts.encoding === 'buffer' ? 'buffer' : 'utf8',
    });
    return { stdout: r.stdout as string | Buffer, stderr: String(r.stderr), code: 0 };
  } catch (e) {
    if (!opts.allowFail) throw e;
    const err = e as { stdout?: string | Buffer; stderr?: string; code?: number };
    return { stdout: err.stdout ?? '', stderr: String(err.stderr ?? ''), code: err.code ?? 1 };
  }
}

/** Status line + headers of a `curl -i`/`-D -` dump, last response only. */
export function parseHead(text: string): { status: number; headers: Record<string, string> } {
  const blocks = text.split(/\r?\n\r?\n/).filter((b) => /^HTTP\//.test(b));
  const last = blocks[blocks.length - 1] ?? '';
  const lines = last.split(/\r?\n/);
  const status = Number((lines[0] ?? '').split(' ')[1]);
  const headers: Record<string, string> = {};
  for (const l of lines.slice(1)) {
    const i = l.indexOf(':');
    if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
  }
  return { status, headers };
}
