import { DsmError, ErrorCode } from '@dsm/common';
import { deleteRedisKeys, REDIS_URL, randomTag, rejection, requireRedis } from '@dsm/testkit';
import { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { createKvStore, MemoryKvStore, RedisKvStore } from './index.ts';
import { type KvBackend, kvConformance } from './test-conformance.ts';

/** Keys go under a random prefix (on the tests' Redis) that is deleted afterwards. */
const PREFIX = `dsm_t_${randomTag()}:`;

const memoryBackend: KvBackend = {
  name: 'memory',
  open: async () => new MemoryKvStore({ sweepIntervalMs: 50 }),
  cleanup: async () => {},
};

const redisBackend: KvBackend = {
  name: 'redis',
  async open() {
    await requireRedis();
    return new RedisKvStore(REDIS_URL, PREFIX);
  },
  cleanup: () => deleteRedisKeys(PREFIX),
};

kvConformance(memoryBackend);
kvConformance(redisBackend);

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
