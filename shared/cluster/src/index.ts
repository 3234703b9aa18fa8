/**
 * The local cluster launcher: real node processes started through the `dsm` command, one port
 * scheme, ready lines, stop by PID. Used by `dsm up` (@dsm/cli), @dsm/testkit's
 * `startTestCluster` (whole-cluster and gateway tests) and the HA lab (@dsm/ha).
 */
export {
  Cluster,
  type ClusterOptions,
  dsmEntry,
  type NodeHandle,
  type NodeSpec,
  planCluster,
  portBases,
  portCount,
  type Role,
  type Running,
} from './cluster.ts';
export { until } from './until.ts';
