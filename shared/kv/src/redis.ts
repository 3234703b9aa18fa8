import { createRequire } from 'node:module';
import { DsmError, ErrorCode, redactUrl } from '@dsm/common';
import type { Redis } from 'ioredis';
import { checkIncrement, type KvStore, ttlToMs } from './kv-store.ts';

export interface RedisKvStoreOptions {
  /** TCP connect timeout (default 2000 ms); also bounds how long a call waits for a connect in progress. */
  connectTimeoutMs?: number;
  /** Per-command timeout (default 2000 ms). */
  commandTimeoutMs?: number;
}

/** ioredis loads on first use: a node on the in-process cache never loads it (about 20 MiB). */
const lazy = createRequire(import.meta.url);
const redisDriver = () => lazy('ioredis') as typeof import('ioredis');

const DEL_IF_VALUE = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end`;

// Reply errors that mean "this server cannot serve right now", not "bad request".
const UNAVAILABLE_REPLY = /^(LOADING|READONLY|MASTERDOWN|CLUSTERDOWN|TRYAGAIN|BUSY|NOREPLICAS|OOM)\b/;

/**
 * KvStore on Redis (ioredis). Keys are stored as `<prefix><key>`. Connects lazily on the first
 * call; while Redis is down calls fail fast with DsmError(CACHE_UNAVAILABLE) (no offline queue)
 * and the client keeps reconnecting in the background, so calls succeed again once Redis is back.
 */
export class RedisKvStore implements KvStore {
  readonly prefix: string;
  readonly #redis: Redis;
  readonly #where: string;
  readonly #connectTimeoutMs: number;
  #connecting: Promise<void> | undefined;
  #lastError: Error | undefined;
  #closed = false;

  constructor(url: string, prefix = '', opts: RedisKvStoreOptions = {}) {
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      throw new DsmError(
        ErrorCode.CONFIG,
        `bad Redis URL "${redactUrl(url)}" (expected redis://host:port/db)`,
      );
    }
    if (!/^rediss?:$/.test(parsed.protocol) || !parsed.hostname) {
      throw new DsmError(
        ErrorCode.CONFIG,
        `bad Redis URL "${redactUrl(url)}" (expected redis://host:port/db)`,
      );
    }
    const db = parsed.pathname.replace(/^\//, '');
    if (db !== '' && !/^\d+$/.test(db)) {
      throw new DsmError(ErrorCode.CONFIG, `bad Redis URL "${redactUrl(url)}": database must be a number`);
    }
    this.prefix = prefix;
    this.#where = `${parsed.hostname}:${parsed.port || 6379}`;
    this.#connectTimeoutMs = opts.connectTimeoutMs ?? 2000;
    const { Redis: RedisClient } = redisDriver();
    this.#redis = new RedisClient(url, {
      lazyConnect: true,
      maxRetriesPerRequest: 1,
      enableOfflineQueue: false,
      connectTimeout: this.#connectTimeoutMs,
      commandTimeout: opts.commandTimeoutMs ?? 2000,
      // Reconnect forever, backing off up to 2 s.
      retryStrategy: (times) => Math.min(times * 100, 2000),
    });
    // Without a listener ioredis prints every connection error; the calls report them instead.
    this.#redis.on('error', (e: Error) => {
      this.#lastError = e;
    });
    this.#redis.on('ready', () => {
      this.#lastError = undefined;
    });
    this.#redis.defineCommand('dsmDelIfValue', { numberOfKeys: 1, lua: DEL_IF_VALUE });
  }

  #k(key: string): string {
    return this.prefix + key;
  }

  #unavailable(cause?: unknown): DsmError {
    const why =
      (cause as Error | undefined)?.message || this.#lastError?.message || `status ${this.#redis.status}`;
    const last = this.#lastError?.message;
    const detail = last && last !== why ? `${why}; last error: ${last}` : why;
    return new DsmError(
      ErrorCode.CACHE_UNAVAILABLE,
      `Redis at ${this.#where} unavailable (${detail})`,
      undefined,
      {
        cause,
      },
    );
  }

  /** Waits until the connection is ready, failing fast when Redis is known to be down. */
  async #ready(): Promise<void> {
    if (this.#closed) throw new DsmError(ErrorCode.CACHE_UNAVAILABLE, 'Redis KV store is closed');
    const r = this.#redis;
    switch (r.status) {
      case 'ready':
        return;
      case 'wait':
      case 'end':
        this.#connecting ??= r.connect().finally(() => {
          this.#connecting = undefined;
        });
        break;
      case 'connecting':
      case 'connect':
        // A (re)connect is in flight: wait for its outcome.
        this.#connecting ??= new Promise<void>((resolve, reject) => {
          const done = (err?: Error) => {
            r.off('ready', onReady);
            r.off('close', onClose);
            r.off('end', onClose);
            if (err) reject(err);
            else resolve();
          };
          const onReady = () => done();
          const onClose = () => done(this.#lastError ?? new Error('connection closed'));
          r.on('ready', onReady);
          r.on('close', onClose);
          r.on('end', onClose);
        }).finally(() => {
          this.#connecting = undefined;
        });
        break;
      default:
        // 'reconnecting' / 'close': Redis was lost; fail now, the client retries in the background.
        throw this.#unavailable();
    }
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.#connecting,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error('connect timed out')), this.#connectTimeoutMs + 250);
        }),
      ]);
    } catch (e) {
      throw this.#unavailable(e);
    } finally {
      clearTimeout(timer);
    }
  }

  async #run<T>(what: string, f: (r: Redis) => Promise<T>): Promise<T> {
    await this.#ready();
    try {
      return await f(this.#redis);
    } catch (e) {
      if (e instanceof Error && e.name === 'ReplyError' && !UNAVAILABLE_REPLY.test(e.message)) {
        if (/not an integer|out of range|overflow/i.test(e.message)) {
          throw new DsmError(ErrorCode.BAD_INPUT, `${what}: ${e.message}`, undefined, { cause: e });
        }
        throw e;
      }
      if (e instanceof DsmError) throw e;
      throw this.#unavailable(e);
    }
  }

  get(key: string): Promise<string | null> {
    return this.#run('get', (r) => r.get(this.#k(key)));
  }

  async set(key: string, value: string, ttlMs?: number): Promise<void> {
    const ms = ttlMs === undefined ? undefined : ttlToMs(ttlMs);
    await this.#run('set', (r) =>
      ms === undefined ? r.set(this.#k(key), value) : r.set(this.#k(key), value, 'PX', ms),
    );
  }

  async setIfAbsent(key: string, value: string, ttlMs: number): Promise<boolean> {
    const ms = ttlToMs(ttlMs);
    const res = await this.#run('setIfAbsent', (r) => r.set(this.#k(key), value, 'PX', ms, 'NX'));
    return res === 'OK';
  }

  async del(key: string): Promise<void> {
    await this.#run('del', (r) => r.del(this.#k(key)));
  }

  async delIfValue(key: string, value: string): Promise<boolean> {
    const n = await this.#run('delIfValue', (r) =>
      (r as unknown as { dsmDelIfValue(k: string, v: string): Promise<number> }).dsmDelIfValue(
        this.#k(key),
        value,
      ),
    );
    return Number(n) === 1;
  }

  async expire(key: string, ttlMs: number): Promise<boolean> {
    const ms = ttlToMs(ttlMs);
    const n = await this.#run('expire', (r) => r.pexpire(this.#k(key), ms));
    return n === 1;
  }

  async incrBy(key: string, n: number): Promise<number> {
    checkIncrement(n);
    return this.#run(`incrBy ${key}`, (r) => r.incrby(this.#k(key), n));
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const r = this.#redis;
    if (r.status === 'ready') {
      try {
        await r.quit();
        return;
      } catch {
        // fall through
      }
    }
    r.disconnect();
  }
}
