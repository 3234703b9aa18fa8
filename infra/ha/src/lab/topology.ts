/**
 * The lab's hosts, addresses, ports and paths: everything the other parts of the lab (and
 * Terraform's local environment, infra/terraform/src/lab-parity.ts) must agree on.
 *
 *   t1, t2  keepalived + tracker       tracker VIP 10.213.0.100:21000
 *   i1, i2  keepalived + id server     id VIP      10.213.0.101:22000
 *   s1..s3  glusterd + brick + FUSE mount of the group volume + storage node (group001, replica 3)
 *   c       the clients: a connect proxy the test process talks to through a Unix socket
 */
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** infra/ha/scripts (netns-lab.sh, ensure-deps.sh, ns-tcp-proxy.mjs). */
export const SCRIPTS = fileURLToPath(new URL('../../scripts/', import.meta.url));

// netns-lab.sh makes namespaces dsm-<host> with 10.213.0.(11 + index) in this order
export const HOSTS = ['t1', 't2', 'i1', 'i2', 's1', 's2', 's3', 'c'] as const;
export type Host = (typeof HOSTS)[number];
export const STORAGE_HOSTS = ['s1', 's2', 's3'] as const;
export type StorageHost = (typeof STORAGE_HOSTS)[number];
export const VIP_HOSTS = ['t1', 't2', 'i1', 'i2'] as const;
export type VipHost = (typeof VIP_HOSTS)[number];

export function isHost(h: string): h is Host {
  return (HOSTS as readonly string[]).includes(h);
}

export function isStorageHost(h: string): h is StorageHost {
  return (STORAGE_HOSTS as readonly string[]).includes(h);
}

/** The lab address of host `h` (10.213.0.11 for t1, …); throws for a name that is not a lab host. */
export function ipOf(h: string): string {
  if (!isHost(h)) throw new Error(`${h} is not a lab host (${HOSTS.join(', ')})`);
  return `10.213.0.${11 + HOSTS.indexOf(h)}`;
}

export const TRACKER_VIP = '10.213.0.100';
export const ID_VIP = '10.213.0.101';
export const TRACKER_PORT = 21000;
export const ID_PORT = 22000;
export const STORAGE_PORT = 23000;
export const VOLUME = 'group001';
export const BEAT_MS = 500;
export const BEAT_TIMEOUT_MS = 3 * BEAT_MS;
export const SWEEP_MS = 100;
/** keepalived preempt_delay: a recovered master waits this long before taking its VIP back. */
export const PREEMPT_DELAY_MS = 2000;

/** The lab's state folder: configs, SQLite files, logs, bricks, pid files (removed at teardown). */
export const LAB_STATE = '/tmp/dsm-halab';
/** Where the group volume is mounted on every storage host (one store path for the group). */
export const DATA_PATH = join(LAB_STATE, 'data', VOLUME);
/** Logs of the last run are copied here at teardown. */
export const LAST_LOGS = '/tmp/dsm-halab-last-logs';
/** One lab at a time: the pid of the process running it. */
export const LOCK = '/run/dsm-halab.lock';
/** Files the storage hosts' mount namespaces are bound to. */
export const MNTNS = '/run/dsm-halab-mnt';

/** Network namespace of host `h`. */
export const netnsOf = (h: Host) => `dsm-${h}`;
/** Mount namespace file of host `h` (storage hosts only have one). */
export const mntnsOf = (h: Host) => `${MNTNS}/dsm-${h}`;
