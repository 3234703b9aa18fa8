import { HaConfigError } from './keepalived.ts';

export type ReplicaLayout = 3 | { replica: 2; arbiter: 1 };

export interface GlusterGroupOptions {
  /** Volume name: one volume per storage group. */
  volume: string;
  /** Every server of the group (address or resolvable name), the first one runs the CLI. */
  hosts: string[];
  /** `host:/path/to/brick`, one per host, in host order (the arbiter brick last). */
  bricks: string[];
  /** Replica 3, or replica 2 + arbiter (the third brick holds metadata only). */
  replica: ReplicaLayout;
  /** Extra or overriding volume options (`volume set VOL key value`). */
  options?: Record<string, string>;
  /** Seconds before a silent server is given up (default 5; gluster's own is 42). */
  pingTimeoutS?: number;
  /** Needed when bricks sit on the root filesystem or several bricks share a server. */
  force?: boolean;
  /** For the mount: where to mount, and where the FUSE client logs. */
  mountPoint?: string;
  logFile?: string;
}

export interface GlusterGroupSteps {
  /** Ordered gluster CLI commands (argv), to run on `hosts[0]`. */
  commands: string[][];
  /** The volume options in the order they are set. */
  options: [string, string][];
  /** FUSE mount of the group volume on a storage host (argv of mount(8)). */
  mount: { source: string; options: string[]; argv: string[] };
}

const VOLUME = /^[A-Za-z0-9_-]{1,64}$/;

/**
 * The options every group volume gets:
 * - `cluster.quorum-type auto`: a write needs a majority of the bricks, so a cut never lets two
 *   sides write the same file (plain replica 2 split-brains, recipes section 3);
 * - `network.ping-timeout`: how long I/O stalls when a server goes silent (P14);
 * - `performance.md-cache-timeout 0` (with the FUSE mount's attribute/entry-timeout=0): a
 *   delete or overwrite through one member is seen by the others at once (recipes section 1).
 */
export function groupVolumeOptions(
  o: Pick<GlusterGroupOptions, 'pingTimeoutS' | 'options'>,
): [string, string][] {
  const ping = o.pingTimeoutS ?? 5;
  if (!Number.isInteger(ping) || ping < 1 || ping > 1013)
    throw new HaConfigError('pingTimeoutS must be 1..1013');
  const base: Record<string, string> = {
    'cluster.quorum-type': 'auto',
    'network.ping-timeout': String(ping),
    'performance.md-cache-timeout': '0',
    'cluster.self-heal-daemon': 'on',
    ...o.options,
  };
  return Object.entries(base);
}

/** The ordered GlusterFS steps for one storage group: peer probe, create, options, start, mount. */
export function glusterGroupSteps(o: GlusterGroupOptions): GlusterGroupSteps {
  if (!VOLUME.test(o.volume))
    throw new HaConfigError(`volume must be 1..64 of [A-Za-z0-9_-], got "${o.volume}"`);
  if (o.hosts.length !== 3) throw new HaConfigError(`a group volume needs 3 hosts, got ${o.hosts.length}`);
  if (o.bricks.length !== o.hosts.length) throw new HaConfigError('one brick per host is required');
  o.bricks.forEach((b, i) => {
    const [h, path] = [b.slice(0, b.indexOf(':')), b.slice(b.indexOf(':') + 1)];
    if (h !== o.hosts[i]) throw new HaConfigError(`brick ${i + 1} "${b}" is not on host ${o.hosts[i]}`);
    if (!path.startsWith('/')) throw new HaConfigError(`brick path must be absolute: "${b}"`);
    if (h === 'localhost' || h.startsWith('127.'))
      throw new HaConfigError(`gluster refuses localhost bricks: "${b}"`);
  });
  const gl = (...a: string[]) => ['gluster', '--mode=script', ...a];
  const commands: string[][] = [];
  for (const h of o.hosts.slice(1)) commands.push(gl('peer', 'probe', h));
  const layout = o.replica === 3 ? ['replica', '3'] : ['replica', '2', 'arbiter', '1'];
  if (o.replica !== 3 && (o.replica.replica !== 2 || o.replica.arbiter !== 1))
    throw new HaConfigError('replica must be 3 or { replica: 2, arbiter: 1 }');
  commands.push(gl('volume', 'create', o.volume, ...layout, ...o.bricks, ...(o.force ? ['force'] : [])));
  const options = groupVolumeOptions(o);
  for (const [k, v] of options) commands.push(gl('volume', 'set', o.volume, k, v));
  commands.push(gl('volume', 'start', o.volume));
  const mountOptions = [
    `backup-volfile-servers=${o.hosts.slice(1).join(':')}`,
    'attribute-timeout=0',
    'entry-timeout=0',
    ...(o.logFile ? [`log-file=${o.logFile}`] : []),
  ];
  const source = `${o.hosts[0]}:/${o.volume}`;
  return {
    commands,
    options,
    mount: {
      source,
      options: mountOptions,
      argv: [
        'mount',
        '-t',
        'glusterfs',
        '-o',
        mountOptions.join(','),
        source,
        o.mountPoint ?? `/mnt/${o.volume}`,
      ],
    },
  };
}

/**
 * Pending heals from `gluster volume heal VOL info`: the sum of "Number of entries", or -1 when
 * a brick is not connected ("Number of entries: -", P7) or nothing could be parsed.
 */
export function parseHealInfo(text: string): number {
  let n = 0;
  let seen = 0;
  for (const line of text.split('\n')) {
    const st = /^Status:\s*(.*)$/.exec(line.trim());
    if (st && !/Connected/.test(st[1] ?? '')) return -1;
    const m = /^Number of entries:\s*(\S+)/.exec(line.trim());
    if (m) {
      if (!/^\d+$/.test(m[1] ?? '')) return -1;
      n += Number(m[1]);
      seen++;
    }
  }
  return seen ? n : -1;
}
