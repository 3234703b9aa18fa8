/**
 * Test support shared by the packages' tests (a devDependency only; never imported by library
 * code): whole-cluster starts, database/cache backends, a raw TCP frame connection, the seed
 * vectors, free port ranges, deterministic byte patterns and small async helpers.
 */

// the one polling helper (the launcher's; the HA lab uses it too)
export { until } from '@dsm/cluster';
export {
  BACKEND_NAMES,
  type Backend,
  type BackendName,
  type MariadbBackendOptions,
  mariadbBackend,
  sqliteBackend,
  testBackend,
  testBackends,
} from './backends.ts';
export { startTestCluster, type TestCluster } from './cluster.ts';
export { RawConn, type RawConnOptions, type RawFrame } from './raw-conn.ts';
export { rowCount } from './rows.ts';
export { frameOf, loadSeedVectors, SEED_VECTORS_PATH, type SeedVector } from './seed-vectors.ts';
export {
  deleteRedisKeys,
  dropDatabases,
  MYSQL_URL,
  mysqlAdmin,
  REDIS_URL,
  randomTag,
  redisAdmin,
  requireMysql,
  requireRedis,
} from './services.ts';
export {
  collect,
  freePortRange,
  patternBytes,
  patternChunks,
  patternSource,
  rejection,
  storedFiles,
} from './util.ts';
