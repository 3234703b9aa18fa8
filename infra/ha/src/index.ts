export * from './gluster.ts';
export * from './keepalived.ts';
