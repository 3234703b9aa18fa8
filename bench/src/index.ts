export * from './nginx.ts';
export * from './proc.ts';
export * from './rss.ts';
export * from './run.ts';
export * from './source.ts';
export * from './table.ts';
