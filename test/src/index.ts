export * from './helpers.ts';
