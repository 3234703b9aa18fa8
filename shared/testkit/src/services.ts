/**
 * The real services the tests run against: MariaDB/MySQL and Redis. A service that does not
 * answer makes the test FAIL with a message saying what to start (never a skip).
 */
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { type Connection, createConnection } from 'mysql2/promise';

/** MariaDB/MySQL server for the tests (no database part); tests create `dsm_t_<random>` databases. */
export const MYSQL_URL = process.env.DSM_TEST_MYSQL_URL ?? 'mysql://root@127.0.0.1:3306';
/** Redis for the tests; keys go under a `dsm_t_<random>:` prefix that is deleted afterwards. */
export const REDIS_URL = process.env.DSM_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379/0';

/** 10 random hex characters, for unique database names, key prefixes and ids. */
export const randomTag = (): string => randomBytes(5).toString('hex');

function unreachable(what: string, url: string, envVar: string, e: unknown): Error {
  return new Error(
    `${what} is required for this test but ${url} is unreachable (${(e as Error).message}); ` +
      `start it or set ${envVar}`,
  );
}

/** An admin connection to the MariaDB/MySQL server (no database selected); `end()` it. */
export async function mysqlAdmin(): Promise<Connection> {
  const u = new URL(MYSQL_URL);
  try {
    return await createConnection({
      host: u.hostname,
      port: Number(u.port || 3306),
      user: decodeURIComponent(u.username),
      password: decodeURIComponent(u.password),
      connectTimeout: 5000,
    });
  } catch (e) {
    throw unreachable('MariaDB/MySQL', MYSQL_URL, 'DSM_TEST_MYSQL_URL', e);
  }
}

/** Fails with a clear message when MariaDB/MySQL does not answer. */
export async function requireMysql(): Promise<void> {
  const c = await mysqlAdmin();
  try {
    await c.query('SELECT 1');
  } catch (e) {
    throw unreachable('MariaDB/MySQL', MYSQL_URL, 'DSM_TEST_MYSQL_URL', e);
  } finally {
    await c.end().catch(() => {});
  }
}

/** Drops the given databases (if they exist). */
export async function dropDatabases(names: Iterable<string>): Promise<void> {
  const list = [...names];
  if (list.length === 0) return;
  const c = await mysqlAdmin();
  try {
    for (const d of list) await c.query(`DROP DATABASE IF EXISTS \`${d}\``);
  } finally {
    await c.end();
  }
}

/** A connected Redis client for the tests' own use; `disconnect()` it. */
export async function redisAdmin(): Promise<Redis> {
  const r = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1, connectTimeout: 2000 });
  r.on('error', () => {});
  try {
    await r.connect();
    await r.ping();
  } catch (e) {
    r.disconnect();
    throw unreachable('Redis', REDIS_URL, 'DSM_TEST_REDIS_URL', e);
  }
  return r;
}

/** Fails with a clear message when Redis does not answer. */
export async function requireRedis(): Promise<void> {
  (await redisAdmin()).disconnect();
}

/** Deletes every Redis key starting with `prefix`. */
export async function deleteRedisKeys(prefix: string): Promise<void> {
  const r = await redisAdmin();
  try {
    let cursor = '0';
    do {
      const [next, keys] = await r.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500);
      cursor = next;
      if (keys.length > 0) await r.del(...keys);
    } while (cursor !== '0');
  } finally {
    r.disconnect();
  }
}
