/**
 * What the pairs and groups run, from @dsm/ha's renderers (the ones the HA tests use):
 * keepalived.conf of each pair host (`renderVipPair`), the GlusterFS volume steps and mount of
 * each storage group (`glusterGroupSteps`).
 */
import { type GlusterGroupSteps, glusterGroupSteps, pingCheckCommand, renderVipPair } from '@dsm/ha';
import { fill, runtimeOf } from './inputs.ts';
import type { EnvSpec } from './spec.ts';

/** Command numbers of the PING replies the track script expects (@dsm/packets Command). */
const REPLY = { tracker: 100, id: 101 } as const;

// ---- keepalived ------------------------------------------------------------------------------

/** keepalived.conf of each host of the tracker or id pair, from @dsm/ha's renderVipPair. */
export function vipPairConfs(spec: EnvSpec, role: 'tracker' | 'id'): { name: string; conf: string }[] {
  const p = role === 'tracker' ? spec.trackers : spec.idServers;
  const checkAddress = `127.0.0.1:${p.port}`;
  const rt = runtimeOf(spec);
  return renderVipPair({
    role,
    vip: p.vip,
    interface: p.interface,
    virtualRouterId: p.virtualRouterId,
    nodes: Object.entries(p.hosts).map(([name, address]) => ({ name, address })),
    checkAddress,
    replyCommand: REPLY[role],
    advertIntMs: p.advertIntMs,
    preemptDelayMs: p.preemptDelayMs,
    unicast: p.unicast || undefined,
    trackFileDir: p.trackFileDir,
    // installed hosts run the release's check script; the lab (install null) keeps
    // renderVipPair's default: this checkout's script
    trackScript: spec.install
      ? {
          cmd: pingCheckCommand({
            address: checkAddress,
            replyCommand: REPLY[role],
            timeoutMs: 800,
            script: `${rt.dsm}/infra/ha/scripts/dsm-ping.sh`,
          }),
        }
      : undefined,
  });
}

// ---- GlusterFS -------------------------------------------------------------------------------

function groupInput(spec: EnvSpec, group: string, order: string[]) {
  const g = spec.storageGroups[group];
  if (!g) throw new Error(`no storage group "${group}"`);
  const vars = (host: string) => ({ host, volume: group });
  return {
    volume: group,
    hosts: order.map((h) => g.hosts[h] as string),
    bricks: order.map((h) => `${g.hosts[h]}:${fill(g.brickPath, vars(h))}`),
    replica: g.replica,
    force: g.force,
    mountPoint: fill(g.mountPoint, { volume: group }),
    ...(g.pingTimeoutS !== undefined ? { pingTimeoutS: g.pingTimeoutS } : {}),
    ...(g.options ? { options: g.options } : {}),
  };
}

/** The group's volume steps (run on its first host), from @dsm/ha's glusterGroupSteps. */
export function groupSteps(spec: EnvSpec, group: string): GlusterGroupSteps {
  const g = spec.storageGroups[group];
  if (!g) throw new Error(`no storage group "${group}"`);
  return glusterGroupSteps(groupInput(spec, group, Object.keys(g.hosts)));
}

/**
 * The mount of the group volume on one member: its own glusterd first, the others (in group
 * order) as backup volfile servers, as the HA lab mounts it. glusterGroupSteps renders it with
 * the member first.
 */
export function mountFor(spec: EnvSpec, group: string, host: string): GlusterGroupSteps['mount'] {
  const g = spec.storageGroups[group];
  if (!g || !(host in g.hosts)) throw new Error(`no host "${host}" in storage group "${group}"`);
  const order = [host, ...Object.keys(g.hosts).filter((h) => h !== host)];
  const logFile = g.mountLogFile ? fill(g.mountLogFile, { host, volume: group }) : undefined;
  return glusterGroupSteps({ ...groupInput(spec, group, order), ...(logFile ? { logFile } : {}) }).mount;
}
