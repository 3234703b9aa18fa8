export * from './transport.ts';
export * from './connection.ts';
export * from './pool.ts';
export * from './failover.ts';
export * from './clients.ts';
export * from './dsm-client.ts';
export * from './file-id.ts';
export * from './public-id.ts';
