// Runtime-neutral part of the gateway (Node and Workers). The Node entry is `@dsm/gateway/node`.
export * from './app.ts';
export * from './auth.ts';
export * from './config.ts';
export * from './core.ts';
export * from './http-semantics.ts';
export { boundaryOf, MultipartReader, type Part } from './multipart.ts';
export * from './problem.ts';
export { parseMetadata, TUS_EXTENSIONS, TUS_VERSION, TusService, type TusState } from './tus.ts';
