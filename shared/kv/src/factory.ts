import { DsmError, ErrorCode, redactUrl } from '@dsm/common';
import type { KvStore } from './kv-store.ts';
import { MemoryKvStore } from './memory.ts';
import { RedisKvStore, type RedisKvStoreOptions } from './redis.ts';

export interface CreateKvStoreOptions extends RedisKvStoreOptions {
  /** Key prefix (Redis only; every key is stored as `<prefix><key>`). */
  prefix?: string;
  /** Most live keys of an in-process store (memory: only; see MemoryKvStoreOptions). */
  memoryMaxKeys?: number;
}

/**
 * `undefined`, `''` or `'memory:'` → MemoryKvStore; `redis://host:port/db` (or `rediss://`) →
 * RedisKvStore. Anything else throws DsmError(CONFIG).
 */
export function createKvStore(url: string | undefined, opts: CreateKvStoreOptions = {}): KvStore {
  const u = url?.trim() ?? '';
  if (u === '' || u === 'memory:') return new MemoryKvStore({ maxKeys: opts.memoryMaxKeys });
  if (/^rediss?:\/\//i.test(u)) {
    const { prefix, memoryMaxKeys: _unused, ...redisOpts } = opts;
    // `?prefix=…` in the URL namespaces the keys (several clusters sharing one Redis).
    const parsed = new URL(u);
    const urlPrefix = parsed.searchParams.get('prefix');
    parsed.search = '';
    return new RedisKvStore(parsed.toString(), prefix ?? urlPrefix ?? '', redisOpts);
  }
  throw new DsmError(
    ErrorCode.CONFIG,
    `bad KV store URL "${redactUrl(u)}" (expected memory: or redis://host:port/db[?prefix=p])`,
  );
}
