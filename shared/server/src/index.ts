export * from './node-runner.ts';
export * from './protocol-server.ts';
