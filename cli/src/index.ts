export * from './client-config.ts';
export * from './status-table.ts';
