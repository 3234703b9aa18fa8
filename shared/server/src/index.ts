export * from './access.ts';
export * from './cleanups.ts';
export * from './database.ts';
export * from './node-runner.ts';
export * from './protocol-server.ts';
export * from './security.ts';
export * from './start-node.ts';
