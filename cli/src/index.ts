export * from './cluster.ts';
export * from './client-config.ts';
export * from './status-table.ts';
