import { setTimeout as sleep } from 'node:timers/promises';
import { DsmError, ErrorCode } from '@dsm/common';
import { deleteRedisKeys, REDIS_URL, randomTag, rejection, requireRedis } from '@dsm/testkit';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKvStore, type KvStore, MemoryKvStore, RedisKvStore } from './index.ts';

/** Keys go under a random prefix (on the tests' Redis) that is deleted afterwards. */
const PREFIX = `dsm_t_${randomTag()}:`;
const TTL = 150;

interface Backend {
  name: string;
  open(): Promise<KvStore>;
  cleanup(): Promise<void>;
}

const memoryBackend: Backend = {
  name: 'memory',
  open: async () => new MemoryKvStore({ sweepIntervalMs: 50 }),
  cleanup: async () => {},
};

const redisBackend: Backend = {
  name: 'redis',
  async open() {
    await requireRedis();
    return new RedisKvStore(REDIS_URL, PREFIX);
  },
  cleanup: () => deleteRedisKeys(PREFIX),
};

describe.each([memoryBackend, redisBackend])('KvStore conformance: $name', (backend) => {
  let kv: KvStore;
  let n = 0;
  /** A fresh key per use, so tests do not see each other's data. */
  const key = (name: string) => `${name}:${++n}`;

  beforeAll(async () => {
    kv = await backend.open();
  });

  afterAll(async () => {
    await kv?.close();
    await backend.cleanup();
  });

  it('get / set / del', async () => {
    const k = key('basic');
    expect(await kv.get(k)).toBeNull();
    await kv.set(k, 'v1');
    expect(await kv.get(k)).toBe('v1');
    await kv.set(k, 'v2 with spaces and ünïcödé');
    expect(await kv.get(k)).toBe('v2 with spaces and ünïcödé');
    await kv.del(k);
    expect(await kv.get(k)).toBeNull();
    await kv.del(k); // deleting a missing key is fine
    await kv.set(k, '');
    expect(await kv.get(k)).toBe('');
  });

  it('TTLs expire; a set without TTL clears the TTL', async () => {
    const a = key('ttl');
    const b = key('ttl');
    await kv.set(a, 'x', TTL);
    await kv.set(b, 'y', TTL);
    await kv.set(b, 'y2'); // no TTL now
    expect(await kv.get(a)).toBe('x');
    await sleep(TTL + 100);
    expect(await kv.get(a)).toBeNull();
    expect(await kv.get(b)).toBe('y2');
  });

  it('setIfAbsent: only the first wins; after expiry it can be set again', async () => {
    const k = key('lock');
    const results = await Promise.all(['a', 'b', 'c', 'd'].map((v) => kv.setIfAbsent(k, v, TTL)));
    expect(results.filter(Boolean)).toHaveLength(1);
    const winner = ['a', 'b', 'c', 'd'][results.indexOf(true)];
    expect(await kv.get(k)).toBe(winner);
    expect(await kv.setIfAbsent(k, 'late', TTL)).toBe(false);
    expect(await kv.get(k)).toBe(winner);
    await sleep(TTL + 100);
    expect(await kv.get(k)).toBeNull();
    expect(await kv.setIfAbsent(k, 'again', 5000)).toBe(true);
    expect(await kv.get(k)).toBe('again');
  });

  it('delIfValue deletes only a matching value', async () => {
    const k = key('owned');
    expect(await kv.delIfValue(k, 'me')).toBe(false);
    await kv.set(k, 'me');
    expect(await kv.delIfValue(k, 'someone-else')).toBe(false);
    expect(await kv.get(k)).toBe('me');
    expect(await kv.delIfValue(k, 'me')).toBe(true);
    expect(await kv.get(k)).toBeNull();
    expect(await kv.delIfValue(k, 'me')).toBe(false);
  });

  it('incrBy counts from 0, keeps the TTL, rejects non-integers', async () => {
    const k = key('counter');
    expect(await kv.incrBy(k, 1)).toBe(1);
    expect(await kv.incrBy(k, 41)).toBe(42);
    expect(await kv.incrBy(k, -50)).toBe(-8);
    expect(await kv.get(k)).toBe('-8');
    expect(await kv.incrBy(k, 2 ** 40)).toBe(2 ** 40 - 8);

    const t = key('counter-ttl');
    await kv.set(t, '10', TTL);
    expect(await kv.incrBy(t, 5)).toBe(15);
    await sleep(TTL + 100);
    expect(await kv.get(t)).toBeNull();

    const s = key('not-a-number');
    await kv.set(s, 'abc');
    const e = await rejection(kv.incrBy(s, 1));
    expect(e).toMatchObject({ code: ErrorCode.BAD_INPUT });
    expect(await rejection(kv.incrBy(s, 1.5))).toBeInstanceOf(DsmError);
  });

  it('expire sets a TTL on an existing key only', async () => {
    const k = key('exp');
    expect(await kv.expire(k, TTL)).toBe(false);
    await kv.set(k, 'v');
    expect(await kv.expire(k, TTL)).toBe(true);
    expect(await kv.get(k)).toBe('v');
    await sleep(TTL + 100);
    expect(await kv.get(k)).toBeNull();
    expect(await kv.expire(k, TTL)).toBe(false);

    // Extending a TTL keeps the key alive.
    const l = key('exp-extend');
    await kv.set(l, 'v', TTL);
    await sleep(TTL / 2);
    expect(await kv.expire(l, 5000)).toBe(true);
    await sleep(TTL);
    expect(await kv.get(l)).toBe('v');
  });

  it('rejects bad TTLs', async () => {
    for (const ttl of [0, -1, Number.NaN]) {
      const e = await rejection(kv.set(key('bad-ttl'), 'v', ttl));
      expect(e).toMatchObject({ code: ErrorCode.BAD_INPUT });
    }
  });

  it('after close, calls reject with CACHE_UNAVAILABLE', async () => {
    const other = await backend.open();
    await other.set(key('closing'), 'v');
    await other.close();
    await other.close();
    const e = await rejection(other.get('x'));
    expect(e).toMatchObject({ code: ErrorCode.CACHE_UNAVAILABLE });
  });
});

describe('RedisKvStore specifics', () => {
  it('keys are stored under the prefix', async () => {
    const store = await redisBackend.open();
    const raw = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
    try {
      await store.set('prefixed', 'v');
      expect(await raw.get(`${PREFIX}prefixed`)).toBe('v');
      expect(await raw.get('prefixed')).toBeNull();
    } finally {
      await store.close();
      raw.disconnect();
      await redisBackend.cleanup();
    }
  });

  it('an unreachable Redis rejects with CACHE_UNAVAILABLE within 3 s, every call', async () => {
    const store = new RedisKvStore('redis://127.0.0.1:1/0', 'x:');
    try {
      for (const call of [() => store.get('k'), () => store.set('k', 'v'), () => store.incrBy('k', 1)]) {
        const started = Date.now();
        const e = await rejection(call());
        expect(Date.now() - started).toBeLessThan(3000);
        expect(e).toBeInstanceOf(DsmError);
        expect(e).toMatchObject({
          code: ErrorCode.CACHE_UNAVAILABLE,
          message: expect.stringContaining('127.0.0.1:1'),
        });
      }
    } finally {
      await store.close();
    }
  });
});

describe('createKvStore', () => {
  it('picks the implementation from the URL', async () => {
    for (const url of [undefined, '', 'memory:']) {
      const s = createKvStore(url);
      expect(s).toBeInstanceOf(MemoryKvStore);
      await s.close();
    }
    const r = createKvStore(REDIS_URL, { prefix: PREFIX });
    expect(r).toBeInstanceOf(RedisKvStore);
    await r.close();
    for (const url of ['memcached://x', 'redis://', 'redis://h:6379/notanumber']) {
      let e: unknown;
      try {
        createKvStore(url);
      } catch (x) {
        e = x;
      }
      expect(e, url).toMatchObject({ code: ErrorCode.CONFIG });
    }
  });

  it('bad URLs name the URL without its password', () => {
    for (const url of ['memcached://u:secret@x', 'rediss://:secret@h:6379/notanumber']) {
      expect(() => createKvStore(url), url).toThrow(/:\*\*\*@/);
      expect(() => createKvStore(url), url).not.toThrow(/secret/);
    }
  });
});

describe('createKvStore URL', () => {
  it('takes a key prefix from ?prefix= in a redis URL', async () => {
    const tag = `dsm_t_url_${Math.random().toString(36).slice(2)}:`;
    const kv = createKvStore(`redis://127.0.0.1:6379/0?prefix=${tag}`);
    const plain = createKvStore('redis://127.0.0.1:6379/0');
    try {
      await kv.set('k', 'v', 5000);
      expect(await plain.get(`${tag}k`)).toBe('v');
      expect(await plain.get('k')).not.toBe('v');
      await kv.del('k');
    } finally {
      await kv.close();
      await plain.close();
    }
  });
});

describe('MemoryKvStore specifics', () => {
  it('with maxKeys, keeps its size at the bound: new keys past it are refused, existing ones still change', async () => {
    const kv = new MemoryKvStore({ maxKeys: 50, sweepIntervalMs: 0 });
    let refused = 0;
    for (let i = 0; i < 200; i++) {
      await kv.set(`k${i}`, 'v', 60_000).catch((e: unknown) => {
        expect(e).toMatchObject({ code: ErrorCode.CACHE_UNAVAILABLE });
        refused++;
      });
    }
    expect(refused).toBe(150);
    expect(kv.size).toBe(50);
    await expect(kv.setIfAbsent('new', 'v', 1000)).rejects.toMatchObject({
      code: ErrorCode.CACHE_UNAVAILABLE,
    });
    await expect(kv.incrBy('counter', 1)).rejects.toMatchObject({ code: ErrorCode.CACHE_UNAVAILABLE });
    await kv.set('k0', 'changed');
    expect(await kv.get('k0')).toBe('changed');
    // expired keys make room
    await kv.set('k1', 'short', 1);
    await new Promise((r) => setTimeout(r, 5));
    await kv.set('fresh', 'v');
    expect(kv.size).toBe(50);
    await kv.close();
  });
});
