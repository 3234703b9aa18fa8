export { JoinAccess } from './access.ts';
export {
  APP_ID_RE,
  configSchema,
  GROUP_NAME_RE,
  isIpOrCidr,
  parseListen,
  type TrackerConfig,
  type TrackerConfigInput,
} from './config.ts';
export { connKey } from './conn-key.ts';
export {
  GroupRouter,
  type GroupRouterOptions,
  groupFreeBytes,
  ROUTE_FAIL,
  routeCacheKey,
} from './group-router.ts';
export {
  type BeatExtInput,
  checkGroupName,
  ctime,
  DROP_OFFLINE_AFTER_MS,
  formatGroupList,
  type JoinInput,
  Registry,
  type RegistryOptions,
  type StorageRecord,
  type StorageStateName,
} from './registry.ts';
export {
  type RunningTracker,
  resolveDatabaseUrl,
  type StartTrackerOptions,
  startTracker,
} from './tracker.ts';
