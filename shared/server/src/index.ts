// runNode lives in @dsm/common (the gateway's node:cluster primary runs the same way)
export { type RunNodeOptions, type RunningNode, runNode } from '@dsm/common';
export * from './access.ts';
export * from './admin.ts';
export * from './cleanups.ts';
export * from './database.ts';
export * from './metrics.ts';
export * from './protocol-server.ts';
export * from './security.ts';
export * from './start-node.ts';
