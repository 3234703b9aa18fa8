import { fileURLToPath } from 'node:url';

/** A health check keepalived runs on each node (`vrrp_script`). */
export interface TrackScript {
  /** Absolute command line, e.g. from `pingCheckCommand()`. */
  cmd: string;
  /** Seconds between checks: keepalived refuses less than 1 (recipes P11). */
  intervalS?: number;
  /** Seconds a check may take before it counts as failed. */
  timeoutS?: number;
  /** Failures in a row before the node goes FAULT (VIP released). */
  fall?: number;
  /** Successes in a row before it may hold the VIP again. */
  rise?: number;
}

export interface KeepalivedOptions {
  /** VRRP instance name (also the router id unless `routerId` is given). */
  instance: string;
  routerId?: string;
  /** Interface the VIP lives on (eth0 in the lab). */
  interface: string;
  /** The virtual IP with its prefix length, e.g. `10.213.0.100/24`. */
  vip: string;
  /** VRRP router id, 1..255, unique per VIP on the segment. */
  virtualRouterId: number;
  /** 1..254; the highest healthy node holds the VIP. */
  priority: number;
  state: 'MASTER' | 'BACKUP';
  /** Unicast VRRP (clouds without multicast): this node's address and its peers. */
  unicast?: { src: string; peers: string[] };
  /**
   * Advertisement interval. Below 1000 ms (or not whole seconds) needs VRRPv3, which is
   * rendered then: failover after a crash takes about 3 × this interval.
   */
  advertIntMs: number;
  trackScript: TrackScript;
  /** A file a test or an operator writes a non-zero number into to force FAULT at once. */
  trackFile?: string;
  /** Keep the VIP where it is when a higher-priority node comes back. */
  nopreempt?: boolean;
  /**
   * Wait this long (ms, 0..1,000,000) after start or after a healthy return before taking the
   * VIP from a lower-priority master: a restarted tracker needs its storages to join and beat
   * again before it routes anything. keepalived applies it only when `state` is BACKUP.
   */
  preemptDelayMs?: number;
}

export class HaConfigError extends Error {
  override name = 'HaConfigError';
}

const IPV4 = /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/;
const NAME = /^[A-Za-z0-9_.-]{1,64}$/;

function intIn(v: number, lo: number, hi: number, what: string): number {
  if (!Number.isInteger(v) || v < lo || v > hi)
    throw new HaConfigError(`${what} must be an integer ${lo}..${hi}, got ${v}`);
  return v;
}

function ipv4(s: string, what: string): string {
  if (!IPV4.test(s)) throw new HaConfigError(`${what} must be an IPv4 address, got "${s}"`);
  return s;
}

/** A value keepalived reads as one quoted string: no quotes, newlines or comment marks inside. */
function quoted(s: string, what: string): string {
  if (/["\n\r#!]/.test(s))
    throw new HaConfigError(`${what} must not contain quotes, newlines, # or !: "${s}"`);
  return `"${s}"`;
}

/**
 * keepalived.conf for one node of a VIP pair (tracker pair, id-server pair). The rendered file
 * passes `keepalived -t` (script security on, so the check runs as root from a root-owned
 * binary, recipes P10).
 */
export function renderKeepalivedConf(o: KeepalivedOptions): string {
  if (!NAME.test(o.instance))
    throw new HaConfigError(`instance must be 1..64 of [A-Za-z0-9_.-], got "${o.instance}"`);
  const routerId = o.routerId ?? o.instance;
  if (!NAME.test(routerId))
    throw new HaConfigError(`routerId must be 1..64 of [A-Za-z0-9_.-], got "${routerId}"`);
  if (!/^[A-Za-z0-9_.@-]{1,15}$/.test(o.interface))
    throw new HaConfigError(`bad interface name "${o.interface}"`);
  const [vipAddr, prefix = '32', ...extra] = o.vip.split('/');
  ipv4(vipAddr ?? '', 'vip');
  if (extra.length) throw new HaConfigError(`bad vip "${o.vip}"`);
  intIn(Number(prefix), 1, 32, 'vip prefix length');
  intIn(o.virtualRouterId, 1, 255, 'virtualRouterId');
  intIn(o.priority, 1, 254, 'priority');
  if (o.state !== 'MASTER' && o.state !== 'BACKUP') throw new HaConfigError(`state must be MASTER or BACKUP`);
  intIn(o.advertIntMs, 10, 40_950, 'advertIntMs');
  if (o.advertIntMs % 10 !== 0)
    throw new HaConfigError('advertIntMs must be a multiple of 10 ms (VRRPv3 centiseconds)');
  const v3 = o.advertIntMs % 1000 !== 0;
  const preemptDelay = intIn(o.preemptDelayMs ?? 0, 0, 1_000_000, 'preemptDelayMs');
  if (preemptDelay > 0 && o.state === 'MASTER')
    throw new HaConfigError('preemptDelayMs needs state BACKUP (keepalived ignores it for MASTER)');
  if (preemptDelay > 0 && o.nopreempt)
    throw new HaConfigError('preemptDelayMs and nopreempt exclude each other');
  const ts = o.trackScript;
  if (!ts.cmd.startsWith('/'))
    throw new HaConfigError(`trackScript.cmd must start with an absolute path: "${ts.cmd}"`);
  const interval = intIn(ts.intervalS ?? 1, 1, 4294, 'trackScript.intervalS (keepalived refuses < 1 s)');
  const timeout = intIn(ts.timeoutS ?? interval, 1, 4294, 'trackScript.timeoutS');
  const fall = intIn(ts.fall ?? 1, 1, 255, 'trackScript.fall');
  const rise = intIn(ts.rise ?? 1, 1, 255, 'trackScript.rise');
  const lines: string[] = [];
  lines.push(
    '# rendered by @dsm/ha renderKeepalivedConf; do not edit by hand',
    'global_defs {',
    `  router_id ${routerId}`,
    ...(v3 ? ['  vrrp_version 3'] : []),
    '  script_user root',
    '  enable_script_security',
    '  vrrp_garp_master_delay 0',
    '  vrrp_garp_master_repeat 1',
    '}',
    `vrrp_script chk_${o.instance} {`,
    `  script ${quoted(ts.cmd, 'trackScript.cmd')}`,
    `  interval ${interval}`,
    `  timeout ${timeout}`,
    `  fall ${fall}`,
    `  rise ${rise}`,
    '}',
  );
  if (o.trackFile) {
    if (!o.trackFile.startsWith('/')) throw new HaConfigError('trackFile must be an absolute path');
    lines.push(
      `track_file force_fault_${o.instance} {`,
      `  file ${quoted(o.trackFile, 'trackFile')}`,
      '  weight 0',
      '  init_file 0 overwrite',
      '}',
    );
  }
  const adv = v3 ? (o.advertIntMs / 1000).toFixed(2).replace(/0$/, '') : String(o.advertIntMs / 1000);
  lines.push(
    `vrrp_instance ${o.instance} {`,
    `  state ${o.state}`,
    `  interface ${o.interface}`,
    `  virtual_router_id ${o.virtualRouterId}`,
    `  priority ${o.priority}`,
    `  advert_int ${adv}`,
    ...(o.nopreempt ? ['  nopreempt'] : []),
    ...(preemptDelay > 0 ? [`  preempt_delay ${preemptDelay / 1000}`] : []),
  );
  if (o.unicast) {
    lines.push(`  unicast_src_ip ${ipv4(o.unicast.src, 'unicast.src')}`, '  unicast_peer {');
    if (o.unicast.peers.length === 0) throw new HaConfigError('unicast.peers must not be empty');
    for (const p of o.unicast.peers) lines.push(`    ${ipv4(p, 'unicast peer')}`);
    lines.push('  }');
  }
  lines.push(
    '  virtual_ipaddress {',
    `    ${vipAddr}/${prefix} dev ${o.interface}`,
    '  }',
    '  track_script {',
    `    chk_${o.instance}`,
    '  }',
  );
  if (o.trackFile) lines.push('  track_file {', `    force_fault_${o.instance}`, '  }');
  lines.push('}', '');
  return lines.join('\n');
}

/** Absolute path of the PING health check shipped with this package (bash, no Node start). */
export const PING_SCRIPT = fileURLToPath(new URL('../scripts/dsm-ping.sh', import.meta.url));

/**
 * The track-script command line that checks a dsm node answers the protocol PING:
 * `dsm-ping.sh HOST:PORT REPLY TIMEOUT_MS`. `replyCommand`: 100 tracker, 101 id, 102 storage.
 */
export function pingCheckCommand(o: {
  address: string;
  replyCommand?: number;
  timeoutMs?: number;
  script?: string;
}): string {
  const parts = [o.script ?? PING_SCRIPT, o.address];
  if (o.replyCommand !== undefined) parts.push(String(o.replyCommand));
  if (o.timeoutMs !== undefined) {
    if (o.replyCommand === undefined) parts.push('0');
    parts.push(String(o.timeoutMs));
  }
  for (const p of parts)
    if (/\s/.test(p)) throw new HaConfigError(`no spaces allowed in the check command: "${p}"`);
  return parts.join(' ');
}

export interface VipPairOptions {
  /** e.g. `tracker` or `id`. */
  role: string;
  vip: string;
  interface: string;
  virtualRouterId: number;
  /** The node addresses, master first. */
  nodes: { name: string; address: string }[];
  /** Address the local check pings, on every node (e.g. `127.0.0.1:21000`). */
  checkAddress: string;
  replyCommand: number;
  advertIntMs?: number;
  unicast?: boolean;
  trackFileDir?: string;
  trackScript?: Partial<TrackScript>;
  /**
   * How long a recovered higher-priority node waits before it takes the VIP back (default
   * 5000 ms: a storage retries a lost tracker every 2 s at most, then joins and beats at
   * once). With a delay every node starts as BACKUP and priority alone picks the master.
   * 0: take it back at once (the first node starts as MASTER).
   */
  preemptDelayMs?: number;
}

/** keepalived.conf of each node of a VIP pair: the first node has the top priority (150). */
export function renderVipPair(o: VipPairOptions): { name: string; conf: string }[] {
  if (o.nodes.length < 2) throw new HaConfigError('a VIP pair needs at least two nodes');
  const preemptDelayMs = o.preemptDelayMs ?? 5000;
  return o.nodes.map((n, i) => ({
    name: n.name,
    conf: renderKeepalivedConf({
      instance: `dsm_${o.role}`,
      routerId: n.name,
      interface: o.interface,
      vip: o.vip,
      virtualRouterId: o.virtualRouterId,
      priority: 150 - 50 * Math.min(i, 2) - Math.max(0, i - 2),
      state: i === 0 && preemptDelayMs === 0 ? 'MASTER' : 'BACKUP',
      preemptDelayMs,
      advertIntMs: o.advertIntMs ?? 100,
      unicast: o.unicast
        ? { src: n.address, peers: o.nodes.filter((p) => p !== n).map((p) => p.address) }
        : undefined,
      trackScript: {
        cmd: pingCheckCommand({ address: o.checkAddress, replyCommand: o.replyCommand, timeoutMs: 800 }),
        intervalS: 1,
        timeoutS: 1,
        fall: 1,
        rise: 1,
        ...o.trackScript,
      },
      trackFile: o.trackFileDir ? `${o.trackFileDir}/${n.name}.force-fault` : undefined,
    }),
  }));
}
