export * from './client-config.ts';
export * from './cluster.ts';
export * from './status-table.ts';
