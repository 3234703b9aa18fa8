import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { Cluster, ClusterOptions } from '@dsm/cluster';
import { createKvStore, type KvStore } from '@dsm/kv';
import { type BackendName, startTestCluster, storedFiles } from '@dsm/testkit';
import { type GatewayConfigInput, parseGatewayConfig } from './config.ts';
import { type RunningGateway, startGateway } from './node.ts';

// A cluster for gateway tests: @dsm/testkit's startTestCluster (the launcher of `dsm up` and of
// the whole-cluster tests, one port scheme, one set of backend names), plus gateways started
// in this process.

export const REDIS_URL = 'redis://127.0.0.1:6379';

export const run = promisify(execFile);

/** The gateway package's folder (wrangler.toml, src/). */
export const GATEWAY_DIR = dirname(dirname(fileURLToPath(import.meta.url)));
const WRANGLER = join(GATEWAY_DIR, '..', 'node_modules', 'wrangler', 'bin', 'wrangler.js');
/** wrangler without network: no metrics, no error reports, no banner, no Cloudflare fetches. */
export const WRANGLER_OFFLINE = {
  CI: 'true',
  WRANGLER_SEND_METRICS: 'false',
  WRANGLER_SEND_ERROR_REPORTS: 'false',
  WRANGLER_HIDE_BANNER: 'true',
  CLOUDFLARE_CF_FETCH_ENABLED: 'false',
};

/** Builds the Worker into `out` (worker.js) as `wrangler deploy` would: offline, --dry-run. */
export function buildWorker(out: string) {
  return run(process.execPath, [WRANGLER, 'deploy', '--dry-run', '--outdir', out], {
    cwd: GATEWAY_DIR,
    env: { ...process.env, ...WRANGLER_OFFLINE },
  });
}

/** wrangler.toml's text. */
export function wranglerToml(): string {
  return readFileSync(join(GATEWAY_DIR, 'wrangler.toml'), 'utf8');
}

/** wrangler.toml's compatibility_date (the Miniflare tests run the bundle with it). */
export function compatibilityDate(): string {
  const d = /^compatibility_date\s*=\s*"([\d-]+)"/m.exec(wranglerToml())?.[1];
  if (!d) throw new Error('no compatibility_date in wrangler.toml');
  return d;
}

/** Deterministic pseudo-random bytes. */
export { patternBytes } from '@dsm/testkit';

export interface Stack {
  cluster: Cluster;
  dir: string;
  backend: BackendName;
  /** Gateway KV URL: memory (SQLite backend) or a Redis prefix unique to this stack. */
  cacheUrl: string;
  gateway: RunningGateway;
  /** Starts another gateway on the same cluster (sharing `kv` when given). */
  startGateway(cfg?: GatewayConfigInput, kv?: KvStore): Promise<RunningGateway>;
  /** Regular files under the group data folders (committed files and partials), relative; no locks or probes. */
  dataFiles(): string[];
  stop(): Promise<void>;
}

export async function startStack(
  backend: BackendName,
  gw: GatewayConfigInput = {},
  o: Partial<ClusterOptions> = {},
): Promise<Stack> {
  const t = await startTestCluster(backend, { trackers: 1, groups: ['group001'], storagesPerGroup: 2, ...o });
  const { cluster, dir } = t;
  const cacheUrl = backend === 'mariadb+redis' ? t.store.cacheUrl('gw:') : 'memory:';
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
  let gateway: RunningGateway;
  try {
    gateway = await startOne(gw);
    // every storage ACTIVE on every tracker before the first upload
    await t.waitActive(cluster.addresses('storage').length, 20_000);
  } catch (e) {
    for (const g of gateways) await g.close();
    await t.stop();
    throw e;
  }
  return {
    cluster,
    dir,
    backend,
    cacheUrl,
    gateway,
    startGateway: startOne,
    dataFiles() {
      return storedFiles(join(dir, 'data'));
    },
    async stop() {
      for (const g of gateways) await g.close();
      await t.stop();
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
