export * from './create-db.ts';
export * from './errors.ts';
export * from './migrate.ts';
export * from './schema.ts';
