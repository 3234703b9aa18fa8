/**
 * Where a test keeps its data: SQLite files in a temp folder + the in-process cache, or real
 * MariaDB (fresh `dsm_t_<random>_<name>` databases, dropped by cleanup) + Redis (a random
 * `dsm_t_<random>:` key prefix, whose keys cleanup deletes). Suites loop over both:
 *
 *   describe.each(BACKEND_NAMES)('… on %s', (name) => {
 *     const backend = testBackend(name);
 *     beforeAll(() => backend.setup());
 *     afterAll(() => backend.cleanup());
 *     … startX({ database: backend.database('x'), cache: backend.cache }, { cachePrefix: backend.cachePrefix })
 *   });
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  deleteRedisKeys,
  dropDatabases,
  MYSQL_URL,
  REDIS_URL,
  randomTag,
  requireMysql,
  requireRedis,
} from './services.ts';

export type BackendName = 'sqlite+memory' | 'mariadb+redis';
export const BACKEND_NAMES: readonly BackendName[] = ['sqlite+memory', 'mariadb+redis'];

export interface Backend {
  readonly name: BackendName;
  /** Creates the temp folder, or checks that the services answer (a missing one fails clearly). */
  setup(): Promise<void>;
  /** URL of this backend's database `name` (the same name gives the same database; none: a fresh one). */
  database(name?: string): string;
  /** KV store URL: `memory:` or the Redis server. */
  readonly cache: string;
  /** A key prefix unique to this backend (`dsm_t_<random>:`), for the nodes' `cachePrefix` option. */
  readonly cachePrefix: string;
  /** `cache` with `cachePrefix + sub` in the URL (`…?prefix=`), for nodes configured by URL only. */
  cacheUrl(sub?: string): string;
  /** Removes the temp folder, or drops the databases and deletes the keys. */
  cleanup(): Promise<void>;
}

/** SQLite databases in a temp folder (created by setup, removed by cleanup) + the in-process cache. */
export function sqliteBackend(): Backend {
  let dir = '';
  return {
    name: 'sqlite+memory',
    async setup() {
      dir = mkdtempSync(join(tmpdir(), 'dsm-t-'));
    },
    database(name = randomTag()) {
      if (!dir) throw new Error('sqliteBackend: call setup() before database()');
      return `sqlite:${join(dir, `${name}.db`)}`;
    },
    cache: 'memory:',
    cachePrefix: `dsm_t_${randomTag()}:`,
    cacheUrl: () => 'memory:',
    async cleanup() {
      if (dir) rmSync(dir, { recursive: true, force: true });
      dir = '';
    },
  };
}

export interface MariadbBackendOptions {
  /** Also check (setup) and clean (cleanup) Redis; default true. Off for database-only tests. */
  redis?: boolean;
}

/** Fresh MariaDB/MySQL databases at MYSQL_URL + a fresh key prefix on REDIS_URL. */
export function mariadbBackend(opts: MariadbBackendOptions = {}): Backend {
  const redis = opts.redis ?? true;
  const tag = `dsm_t_${randomTag()}`;
  const cachePrefix = `${tag}:`;
  const created = new Set<string>();
  return {
    name: 'mariadb+redis',
    async setup() {
      await requireMysql();
      if (redis) await requireRedis();
    },
    database(name = randomTag()) {
      const db = `${tag}_${name}`;
      created.add(db);
      return `${MYSQL_URL.replace(/\/+$/, '')}/${db}`;
    },
    cache: REDIS_URL,
    cachePrefix,
    cacheUrl: (sub = '') => `${REDIS_URL}${REDIS_URL.includes('?') ? '&' : '?'}prefix=${cachePrefix}${sub}`,
    async cleanup() {
      await dropDatabases(created);
      created.clear();
      if (redis) await deleteRedisKeys(cachePrefix);
    },
  };
}

export function testBackend(name: BackendName, opts: MariadbBackendOptions = {}): Backend {
  return name === 'sqlite+memory' ? sqliteBackend() : mariadbBackend(opts);
}

/** Both backends, fresh (not set up yet). */
export function testBackends(opts: MariadbBackendOptions = {}): Backend[] {
  return BACKEND_NAMES.map((n) => testBackend(n, opts));
}
