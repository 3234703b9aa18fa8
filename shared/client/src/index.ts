export * from './clients.ts';
export * from './connection.ts';
export * from './dsm-client.ts';
export * from './failover.ts';
export * from './file-id.ts';
export * from './pool.ts';
export * from './public-id.ts';
export * from './transport.ts';
