export * from './factory.ts';
export * from './kv-store.ts';
export * from './memory.ts';
export * from './redis.ts';
