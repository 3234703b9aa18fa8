/**
 * The HA lab (`@dsm/ha/lab`): a dsm cluster across network namespaces with real keepalived and
 * GlusterFS, for the HA fault tests (test/src/ha/faults.test.ts) and Terraform's local
 * environment (infra/terraform/src/local-lab.ts, lab-parity.ts). Needs root.
 */
export { GlusterLab, type GlusterLabOptions } from './gluster-lab.ts';
export { KeepalivedLab, type LabVipPair, labVipConfs } from './keepalived-lab.ts';
export { Lab, type LabNodeConfig } from './lab.ts';
export { LabNetwork, releaseLabLock, takeLabLock } from './netns.ts';
export {
  inNode,
  LAB_ENV,
  type LabNode,
  LabProcesses,
  type NodeRole,
  type NodeRunner,
  pidAlive,
  sh,
  shSync,
  sleep,
} from './processes.ts';
export * from './topology.ts';
export { labTransport } from './transport.ts';
