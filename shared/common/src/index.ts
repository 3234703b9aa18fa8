export * from './address.ts';
export * from './config.ts';
export * from './errors.ts';
export * from './logger.ts';
export * from './node-flags.ts';
export * from './node-runner.ts';
export * from './redact.ts';
