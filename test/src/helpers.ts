// What the whole-cluster tests share: the cluster start of @dsm/testkit (the launcher of
// `dsm up`, one port scheme) on the two backends by their one set of names.
export {
  BACKEND_NAMES,
  type BackendName,
  collect,
  freePortRange,
  patternChunks,
  patternSource,
  startTestCluster,
  type TestCluster,
} from '@dsm/testkit';
