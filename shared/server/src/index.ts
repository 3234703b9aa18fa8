export * from './protocol-server.ts';
export * from './node-runner.ts';
