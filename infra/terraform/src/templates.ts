/**
 * The text templates of a host's provisioning: the shell scripts (`dsm-provision`'s head, the
 * GlusterFS steps, the volume mount, the brick, the install of Node and the release, the VIP
 * sync) and the systemd units with the `dsm` user's steps. Values are quoted for bash here.
 */
import { dirname } from 'node:path';
import { nodeFlagsFor } from '@dsm/common';
import type { GlusterGroupSteps } from '@dsm/ha';
import { vipAddress } from './inputs.ts';
import { CLUSTER_KEY_FILE, type NodeRole } from './node-configs.ts';
import type { EnvSpec, StorageGroupSpec } from './spec.ts';

// ---- shell -----------------------------------------------------------------------------------

export const q = (s: string) => (/^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);
export const argv = (a: string[]) => a.map(q).join(' ');

export const SH_HEAD = `#!/bin/bash
set -euo pipefail
log() { echo "dsm: $*" >&2; }
# retry TRIES CMD...: every 5 s until it succeeds
retry() {
  local tries=$1 n=0
  shift
  until "$@"; do
    n=$((n + 1))
    if [ "$n" -ge "$tries" ]; then
      log "gave up: $*"
      return 1
    fi
    sleep 5
  done
}
`;

/** The group's volume steps as a script for its first host: idempotent, waits for its peers. */
export function glusterStepsScript(steps: GlusterGroupSteps, volume: string, peers: number): string {
  const lines = [`${SH_HEAD}# GlusterFS steps of volume ${volume}: @dsm/ha glusterGroupSteps, in order`];
  for (const c of steps.commands) {
    const [verb, obj] = [c[2], c[3]];
    if (verb === 'peer' && obj === 'probe') lines.push(`retry 120 ${argv(c)}`);
    else if (verb === 'volume' && obj === 'create') {
      lines.push(
        `retry 120 bash -c ${q(`[ "$(gluster --mode=script pool list | grep -c 'Connected *$')" -ge ${peers} ]`)}`,
        `if ! gluster --mode=script volume info ${q(volume)} >/dev/null 2>&1; then`,
        `  ${argv(c)}`,
        'fi',
      );
    } else if (verb === 'volume' && obj === 'start')
      lines.push(
        `if ! gluster --mode=script volume info ${q(volume)} | grep -q '^Status: Started'; then`,
        `  ${argv(c)}`,
        'fi',
      );
    else lines.push(argv(c));
  }
  return `${lines.join('\n')}\n`;
}

export function mountScript(m: GlusterGroupSteps['mount']): string {
  const mp = m.argv[m.argv.length - 1] as string;
  return `${SH_HEAD}# mounts the group volume (argv from @dsm/ha glusterGroupSteps)
mkdir -p ${q(mp)}
if mountpoint -q ${q(mp)} && stat -f ${q(mp)} >/dev/null 2>&1; then exit 0; fi
umount -l ${q(mp)} 2>/dev/null || true
retry 120 ${argv(m.argv)}
`;
}

export function brickScript(g: StorageGroupSpec, brick: string): string {
  const root = dirname(brick);
  const dev = g.brickDevice;
  return `${SH_HEAD}# the brick: ${dev ? `${dev}, formatted xfs once, mounted on ${root}` : 'a folder on the root filesystem'}
${
  dev
    ? `retry 60 test -b ${q(dev)}
if ! blkid ${q(dev)} >/dev/null 2>&1; then mkfs.xfs -i size=512 ${q(dev)}; fi
mkdir -p ${q(root)}
uuid=$(blkid -s UUID -o value ${q(dev)})
grep -q "$uuid" /etc/fstab || echo "UUID=$uuid ${root} xfs defaults,nofail 0 2" >>/etc/fstab
mountpoint -q ${q(root)} || mount ${q(root)}
`
    : `mkdir -p ${q(root)}
`
}`;
}

// ---- systemd units ---------------------------------------------------------------------------

/** The unprivileged account every dsm node runs as (keepalived and glusterd stay root). */
export const DSM_USER = 'dsm';
/** Folders a node may write besides its data: state (SQLite files, if any) and logs. */
export const DSM_STATE_DIRS = ['/var/lib/dsm', '/var/log/dsm'];

/**
 * The gateway runs a primary and one worker per core (`workers`, node:cluster): systemd signals
 * the primary alone, which drains its workers (they finish what they serve, up to 10 s) and
 * exits; whatever is left at TimeoutStopSec is killed.
 */
const GATEWAY_STOP = 'KillMode=mixed\nTimeoutStopSec=30\n';

/**
 * A node's unit; `node` runs with nodeFlagsFor(role) (@dsm/common), as every launcher of a node does.
 * The node runs as the `dsm` user, cannot gain privileges, sees the file system read-only but
 * for `writable` (its data) and the state and log folders, and has a private /tmp. `extra`
 * lines come first (a `+` ExecStartPre runs as root: the volume mount).
 */
export function unit(
  role: NodeRole,
  rt: { node: string; entry: string },
  extra: string[] = [],
  writable: string[] = [],
): string {
  return `[Unit]
Description=dsm ${role}
After=network-online.target${role === 'storage' ? ' glusterd.service' : ''}
Wants=network-online.target

[Service]
${extra.join('\n')}${extra.length ? '\n' : ''}ExecStart=${[rt.node, ...nodeFlagsFor(role)].join(' ')} ${rt.entry} ${role} --config /etc/dsm/${role}.json
User=${DSM_USER}
Group=${DSM_USER}
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ReadWritePaths=${[...writable, ...DSM_STATE_DIRS].join(' ')}
Restart=always
RestartSec=2
LimitNOFILE=65536
${role === 'gateway' ? GATEWAY_STOP : ''}
[Install]
WantedBy=multi-user.target
`;
}

/**
 * Provisioning lines that create the `dsm` system user and its folders, and let it read its
 * config (root-owned, group dsm, 0640): before any dsm unit starts.
 */
export function dsmUserSteps(role: NodeRole, keyFile = false): string[] {
  const key = keyFile ? [`chgrp ${DSM_USER} ${CLUSTER_KEY_FILE}`] : [];
  return [
    `getent group ${DSM_USER} >/dev/null || groupadd --system ${DSM_USER}`,
    `id -u ${DSM_USER} >/dev/null 2>&1 || useradd --system --gid ${DSM_USER} --home-dir /var/lib/dsm --no-create-home --shell /usr/sbin/nologin ${DSM_USER}`,
    `install -d -o ${DSM_USER} -g ${DSM_USER} -m 0750 ${DSM_STATE_DIRS.join(' ')}`,
    `chgrp ${DSM_USER} /etc/dsm /etc/dsm/${role}.json`,
    ...key,
    'chmod 0750 /etc/dsm',
  ];
}

export function installScript(spec: EnvSpec): string {
  const i = spec.install;
  if (!i) return '# install: null (Node and dsm are already on the host)\n';
  return `# Node and the dsm release
if [ ! -x ${q(i.nodeDir)}/bin/node ]; then
  mkdir -p ${q(i.nodeDir)}
  retry 24 curl -fsSL -o /tmp/node.tar.xz ${q(i.nodeUrl)}
  tar -xJf /tmp/node.tar.xz -C ${q(i.nodeDir)} --strip-components=1
fi
if [ ! -e ${q(i.prefix)}/current/dist/dsm.mjs ]; then
  mkdir -p ${q(i.prefix)}/release
  retry 24 curl -fsSL -o /tmp/dsm.tar.gz ${q(i.releaseUrl)}
  tar -xzf /tmp/dsm.tar.gz -C ${q(i.prefix)}/release --strip-components=1
  # production packages only (esbuild is one: the bundle is built here), then the bundle
  (cd ${q(i.prefix)}/release && PATH=${q(i.nodeDir)}/bin:$PATH npm ci --omit=dev --no-audit --no-fund &&
    PATH=${q(i.nodeDir)}/bin:$PATH npm run build)
  ln -sfn ${q(i.prefix)}/release ${q(i.prefix)}/current
fi
`;
}

export function vipSyncScript(spec: EnvSpec, p: EnvSpec['trackers'], host: string): string {
  const s = spec.vipSync!;
  const peers = Object.keys(p.hosts)
    .filter((h) => h !== host)
    .map((h) => `${spec.environment}-${h}`);
  return `#!/bin/bash
# keeps the cloud network's alias IP on the host that holds the VRRP VIP (keepalived decides;
# Hetzner's routed network ignores gratuitous ARP)
set -uo pipefail
export HCLOUD_TOKEN='{{secret:${s.tokenSecret}}}'
vip=${vipAddress(p.vip)}
held=0
while sleep 1; do
  if ip -4 -o addr show dev ${q(p.interface)} | grep -q " $vip/"; then
    if [ "$held" = 0 ]; then
${peers.map((x) => `      hcloud server change-alias-ips --network ${q(s.network)} --clear ${q(x)} || true`).join('\n')}
      hcloud server change-alias-ips --network ${q(s.network)} --alias-ips "$vip" ${q(`${spec.environment}-${host}`)} && held=1
    fi
  else
    held=0
  fi
done
`;
}

/** The unit of dsm-vip-sync (a pair host of an environment with `vipSync`). */
export const VIP_SYNC_UNIT =
  '[Unit]\nDescription=dsm: cloud alias IP follows the VRRP VIP\nAfter=keepalived.service\n\n[Service]\nExecStart=/usr/local/sbin/dsm-vip-sync\nRestart=always\n\n[Install]\nWantedBy=multi-user.target\n';

// ---- the data host ---------------------------------------------------------------------------

type DataSpec = NonNullable<EnvSpec['data']>;

export const mariadbConf = (address: string) =>
  `[mysqld]\nbind-address = ${address}\nmax_connections = 500\n`;

/** The dsm user of MariaDB, allowed from `allowFrom`, on the tenants' databases (`tnv_*`). */
export const mysqlInitSql = (d: DataSpec) =>
  `CREATE USER IF NOT EXISTS '${d.mysqlUser}'@'${d.allowFrom}' IDENTIFIED BY '${d.mysqlPassword}';\n` +
  `GRANT ALL PRIVILEGES ON \`tnv\\_%\`.* TO '${d.mysqlUser}'@'${d.allowFrom}';\nFLUSH PRIVILEGES;\n`;

export const redisConf = (address: string, d: DataSpec) =>
  `bind ${address} 127.0.0.1\nport ${d.redisPort}\nprotected-mode no\n`;
