export {
  configSchema,
  parseListen,
  resolveDatabaseUrl,
  resolveStorePaths,
  type StorageConfig,
  type StorageConfigInput,
} from './config.ts';
export { FileLock, LOCK_TTL_MS } from './lock.ts';
export { type FileMeta, MetaStore } from './meta.ts';
export { fileTableFor, idKeyFor, pathForId, relativePathForId, seedUserHash } from './seed-rules.ts';
export { DEFAULT_CONTENT_TYPE, isValidContentType, SNIFF_BYTES, sniffContentType } from './sniff.ts';
export { type StartStorageOptions, type StorageNode, startStorage } from './storage.ts';
export { PARTIAL_DIR, Stores, TMP_DIR } from './store.ts';
export { type TrackerLinkState, TrackerLinks, type TrackerLinksOptions } from './tracker-link.ts';
