export * from './render-provisioning.ts';
export * from './spec.ts';
export * from './template.ts';
