export * from './config.ts';
export * from './id-allocator.ts';
export * from './id-server.ts';
