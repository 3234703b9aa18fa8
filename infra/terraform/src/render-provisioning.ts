/**
 * Renders every host's provisioning for one environment with the same code the HA tests use:
 * keepalived.conf from `renderVipPair`, the GlusterFS steps and the mount from
 * `glusterGroupSteps` (both `@dsm/ha`), node configs checked against each node's own
 * `configSchema`. Terraform never templates these files itself: it reads the rendered folder
 * (`rendered/<env>/<host>/user-data.yaml.tftpl`, only secrets are filled in at apply time).
 *
 *   npm run render -w @dsm/terraform            # every environments/<env>/dsm.json
 *   npm run render -w @dsm/terraform -- prod    # one
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { NODE_FLAGS, parseConfig } from '@dsm/common';
import { configSchema as gatewaySchema } from '@dsm/gateway';
import { type GlusterGroupSteps, glusterGroupSteps, pingCheckCommand, renderVipPair } from '@dsm/ha';
import { configSchema as idSchema } from '@dsm/id-node';
import { configSchema as storageSchema } from '@dsm/storage-node';
import { configSchema as trackerSchema } from '@dsm/tracker-node';
import { stringify as yamlStringify } from 'yaml';
import { type EnvSpec, parseEnvSpec, SECRET_MARK, type StorageGroupSpec, secretsIn } from './spec.ts';
import { toTerraformTemplate } from './template.ts';

export const TERRAFORM_DIR = fileURLToPath(new URL('..', import.meta.url));
export const REPO_ROOT = fileURLToPath(new URL('../../..', import.meta.url));
export const ENVIRONMENTS_DIR = join(TERRAFORM_DIR, 'environments');
export const RENDERED_DIR = join(TERRAFORM_DIR, 'rendered');

/** Command numbers of the PING replies the track script expects (@dsm/packets Command). */
const REPLY = { tracker: 100, id: 101 } as const;

export type Role = 'tracker' | 'id' | 'storage' | 'gateway' | 'data';
export interface HostInfo {
  name: string;
  address: string;
  role: Role;
  /** Storage group of a storage host. */
  group?: string;
}

export interface RenderedHost {
  role: Role;
  address: string;
  group?: string;
  /** Paths on the host → content (with `{{secret:x}}` marks). */
  files: { path: string; mode: string; content: string }[];
  packages: string[];
  userData: string;
}

export interface RenderedEnvironment {
  /** Relative path under rendered/<env>/ → content. */
  files: Map<string, string>;
  manifest: Manifest;
  hosts: Map<string, RenderedHost>;
}

export interface Manifest {
  environment: string;
  inputSha256: string;
  renderer: string;
  secrets: string[];
  trackers: PairManifest;
  idServers: PairManifest;
  storageGroups: Record<
    string,
    {
      volume: string;
      port: number;
      mountPoint: string;
      brickSizeGb: number;
      hosts: Record<string, string>;
      storageAddresses: string[];
    }
  >;
  gateways: { port: number; hosts: Record<string, string>; upstreams: string[] } | null;
  data: { hosts: Record<string, string>; mysql: string; redis: string } | null;
  hosts: Record<string, { role: Role; address: string; group?: string; files: string[] }>;
}

interface PairManifest {
  vip: string;
  vipAddress: string;
  port: number;
  endpoint: string;
  hosts: Record<string, string>;
  addresses: string[];
}

// ---- the inputs ------------------------------------------------------------------------------

export function loadEnvSpec(env: string): { spec: EnvSpec; inputSha256: string; file: string } {
  const file = join(ENVIRONMENTS_DIR, env, 'dsm.json');
  const bytes = readFileSync(file);
  const spec = parseEnvSpec(JSON.parse(bytes.toString('utf8')), file);
  if (spec.environment !== env)
    throw new Error(`${file}: environment is "${spec.environment}", not "${env}"`);
  return { spec, inputSha256: createHash('sha256').update(bytes).digest('hex'), file };
}

export function listEnvironments(): string[] {
  return readdirSync(ENVIRONMENTS_DIR)
    .filter((d) => existsSync(join(ENVIRONMENTS_DIR, d, 'dsm.json')))
    .sort();
}

export function hostsOf(spec: EnvSpec): HostInfo[] {
  const out: HostInfo[] = [];
  const add = (m: Record<string, string>, role: Role, group?: string) => {
    for (const [name, address] of Object.entries(m)) out.push({ name, address, role, group });
  };
  add(spec.trackers.hosts, 'tracker');
  add(spec.idServers.hosts, 'id');
  for (const [g, s] of Object.entries(spec.storageGroups)) add(s.hosts, 'storage', g);
  if (spec.gateways) add(spec.gateways.hosts, 'gateway');
  if (spec.data) add(spec.data.hosts, 'data');
  const seenName = new Map<string, HostInfo>();
  const seenAddr = new Map<string, HostInfo>();
  for (const h of out) {
    const a = seenName.get(h.name);
    if (a) throw new Error(`host "${h.name}" is both a ${a.role} and a ${h.role} host: one role per host`);
    const b = seenAddr.get(h.address);
    if (b) throw new Error(`hosts "${b.name}" and "${h.name}" share the address ${h.address}`);
    seenName.set(h.name, h);
    seenAddr.set(h.address, h);
  }
  return out;
}

/**
 * Node binary, dsm checkout and the `dsm` entry a host runs. Installed hosts run the bundle the
 * install step builds (`dist/dsm.mjs`: no TypeScript loader, each role loads only its own
 * chunks; docs/performance.md); `install: null` = the Node and checkout that render, from source.
 */
export function runtimeOf(spec: EnvSpec): { node: string; dsm: string; entry: string } {
  if (!spec.install) {
    const dsm = REPO_ROOT.replace(/\/$/, '');
    return { node: process.execPath, dsm, entry: `${dsm}/cli/bin/dsm.js` };
  }
  const dsm = `${spec.install.prefix}/current`;
  return { node: `${spec.install.nodeDir}/bin/node`, dsm, entry: `${dsm}/dist/dsm.mjs` };
}

const vipAddress = (vip: string) => vip.split('/')[0] as string;
const fill = (s: string, v: Record<string, string>) =>
  s.replace(/\{(host|volume)\}/g, (_m, k: string) => v[k] ?? '');

// ---- node configs ----------------------------------------------------------------------------

const SCHEMAS = {
  tracker: trackerSchema,
  id: idSchema,
  storage: storageSchema,
  gateway: gatewaySchema,
} as const;
type NodeRole = keyof typeof SCHEMAS;

/**
 * Derived keys first, then the environment's `config` keys, in the order of the node's schema
 * (docs/configuration.md): the same bytes as `JSON.stringify(config, null, 2)` of the HA lab.
 */
function nodeConfig(role: NodeRole, derived: Record<string, unknown>, extra: Record<string, unknown>) {
  for (const k of Object.keys(extra))
    if (k in derived) throw new Error(`${role} config: "${k}" is derived from the topology, do not set it`);
  const merged: Record<string, unknown> = { ...derived, ...extra };
  const schema = SCHEMAS[role];
  const order = Object.keys(schema.shape);
  const unknown = Object.keys(merged).filter((k) => !order.includes(k));
  if (unknown.length) throw new Error(`${role} config: unknown key "${unknown[0]}" (docs/configuration.md)`);
  const out: Record<string, unknown> = {};
  for (const k of order) if (k in merged) out[k] = merged[k];
  // validated as the node will (secrets replaced by a stand-in of the allowed alphabet)
  const probe = JSON.parse(JSON.stringify(out).replace(SECRET_MARK, 'x'.repeat(40)));
  try {
    parseConfig(schema, probe);
  } catch (e) {
    throw new Error(`${role} config: ${(e as Error).message}`);
  }
  return out;
}

/**
 * Node-protocol auth in every environment: each tracker, id server and storage gets
 * `auth.required` with the cluster key from CLUSTER_KEY_FILE, which provisioning writes from the
 * `cluster_key` secret (at least 32 characters); the gateways authenticate with the same key.
 * A node config of dsm.json may set `auth` itself (a second key during a rotation), but not
 * turn it off, except with `auth.allowUnauthenticated` (the local lab's closed network).
 */
export const CLUSTER_KEY_FILE = '/etc/dsm/cluster.key';
export const CLUSTER_KEY_ID = 'main';
export const CLUSTER_KEY_SECRET = 'cluster_key';

function withNodeAuth(role: NodeRole, extra: Record<string, unknown>): Record<string, unknown> {
  const auth = extra.auth as { required?: unknown; allowUnauthenticated?: unknown } | undefined;
  if (!auth) {
    return {
      ...extra,
      auth: { required: true, keys: [{ id: CLUSTER_KEY_ID, secretFile: CLUSTER_KEY_FILE }] },
    };
  }
  if (auth.required !== true && auth.allowUnauthenticated !== true) {
    throw new Error(
      `${role} config: "auth.required" must be true in a rendered environment (or auth.allowUnauthenticated true on a closed lab network)`,
    );
  }
  return extra;
}

export function nodeConfigFor(
  spec: EnvSpec,
  host: string,
): { role: NodeRole; config: Record<string, unknown> } {
  const h = hostsOf(spec).find((x) => x.name === host);
  if (!h) throw new Error(`no host "${host}"`);
  const t = spec.trackers;
  const i = spec.idServers;
  switch (h.role) {
    case 'tracker':
    case 'id': {
      const p = h.role === 'tracker' ? t : i;
      return {
        role: h.role,
        config: nodeConfig(
          h.role,
          { listen: `${p.listenHost}:${p.port}`, hostname: h.name },
          withNodeAuth(h.role, p.config),
        ),
      };
    }
    case 'storage': {
      const g = spec.storageGroups[h.group as string] as StorageGroupSpec;
      const volume = h.group as string;
      return {
        role: 'storage',
        config: nodeConfig(
          'storage',
          {
            listen: `${h.address}:${g.port}`,
            hostname: h.name,
            group: volume,
            storePaths: [fill(g.mountPoint, { volume })],
            trackers: Object.values(t.hosts).map((a) => `${a}:${t.port}`),
            idServers: [`${vipAddress(i.vip)}:${i.port}`],
            glusterVolume: volume,
          },
          withNodeAuth('storage', g.config),
        ),
      };
    }
    case 'gateway': {
      const gw = spec.gateways!;
      const config = nodeConfig(
        'gateway',
        { listen: `0.0.0.0:${gw.port}`, trackers: [`${vipAddress(t.vip)}:${t.port}`] },
        // the nodes require the cluster key: the gateway proves it on every connection
        'cluster' in gw.config
          ? gw.config
          : { ...gw.config, cluster: { keyId: CLUSTER_KEY_ID, keyFile: CLUSTER_KEY_FILE } },
      );
      checkGatewayAuth(config);
      return { role: 'gateway', config };
    }
    default:
      throw new Error(`host "${host}" (${h.role}) runs no dsm node`);
  }
}

/**
 * A Terraform gateway is on a network: tokens are required (`auth.mode` "jwt") and must be for
 * this deployment (`auth.issuer` and `auth.audience` set, so a token minted for another service
 * with the same key is refused).
 */
function checkGatewayAuth(config: Record<string, unknown>): void {
  const auth = (config.auth ?? {}) as Record<string, unknown>;
  for (const [key, ok] of [
    ['mode', auth.mode === 'jwt'],
    ['issuer', typeof auth.issuer === 'string' && auth.issuer !== ''],
    ['audience', typeof auth.audience === 'string' && auth.audience !== ''],
  ] as const) {
    if (!ok)
      throw new Error(
        `gateway config: auth.${key} is required in a Terraform environment (auth.mode "jwt" with auth.issuer and auth.audience)`,
      );
  }
}

/** The file a node config is written as (what the HA lab writes before it starts the node). */
export const configText = (config: Record<string, unknown>) => `${JSON.stringify(config, null, 2)}\n`;

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

// ---- shell -----------------------------------------------------------------------------------

const q = (s: string) => (/^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);
const argv = (a: string[]) => a.map(q).join(' ');

const SH_HEAD = `#!/bin/bash
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

function mountScript(m: GlusterGroupSteps['mount']): string {
  const mp = m.argv[m.argv.length - 1] as string;
  return `${SH_HEAD}# mounts the group volume (argv from @dsm/ha glusterGroupSteps)
mkdir -p ${q(mp)}
if mountpoint -q ${q(mp)} && stat -f ${q(mp)} >/dev/null 2>&1; then exit 0; fi
umount -l ${q(mp)} 2>/dev/null || true
retry 120 ${argv(m.argv)}
`;
}

function brickScript(g: StorageGroupSpec, brick: string): string {
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
 * A node's unit; `node` runs with NODE_FLAGS (@dsm/common), as every launcher of a node does.
 * The node runs as the `dsm` user, cannot gain privileges, sees the file system read-only but
 * for `writable` (its data) and the state and log folders, and has a private /tmp. `extra`
 * lines come first (a `+` ExecStartPre runs as root: the volume mount).
 */
function unit(
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
${extra.join('\n')}${extra.length ? '\n' : ''}ExecStart=${[rt.node, ...NODE_FLAGS].join(' ')} ${rt.entry} ${role} --config /etc/dsm/${role}.json
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

[Install]
WantedBy=multi-user.target
`;
}

/**
 * Provisioning lines that create the `dsm` system user and its folders, and let it read its
 * config (root-owned, group dsm, 0640): before any dsm unit starts.
 */
function dsmUserSteps(role: NodeRole, keyFile = false): string[] {
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

function installScript(spec: EnvSpec): string {
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

function vipSyncScript(spec: EnvSpec, p: EnvSpec['trackers'], host: string): string {
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

// ---- one host --------------------------------------------------------------------------------

export function renderHost(spec: EnvSpec, h: HostInfo): RenderedHost {
  const rt = runtimeOf(spec);
  const files: RenderedHost['files'] = [];
  const packages = ['curl', 'xz-utils'];
  const steps: string[] = [installScript(spec)];
  const file = (path: string, content: string, mode = '0644') => files.push({ path, mode, content });
  const sbin = (name: string, content: string) => file(`/usr/local/sbin/${name}`, content, '0755');
  // the cluster key, when this host's node config reads it (group dsm, like the config)
  const keyFile = (config: Record<string, unknown>): boolean => {
    const uses = JSON.stringify(config).includes(JSON.stringify(CLUSTER_KEY_FILE));
    if (uses) file(CLUSTER_KEY_FILE, `{{secret:${CLUSTER_KEY_SECRET}}}\n`, '0640');
    return uses;
  };

  if (h.role === 'tracker' || h.role === 'id') {
    const p = h.role === 'tracker' ? spec.trackers : spec.idServers;
    const { config } = nodeConfigFor(spec, h.name);
    const conf = vipPairConfs(spec, h.role).find((c) => c.name === h.name)!.conf;
    packages.push('keepalived');
    file(`/etc/dsm/${h.role}.json`, configText(config), '0640');
    const withKey = keyFile(config);
    file('/etc/keepalived/keepalived.conf', conf, '0640');
    file(`/etc/systemd/system/dsm-${h.role}.service`, unit(h.role, rt));
    steps.push(...dsmUserSteps(h.role, withKey));
    if (p.trackFileDir) {
      // the track file's folder must exist before keepalived starts, also after a reboot (/run)
      file('/etc/tmpfiles.d/dsm.conf', `d ${p.trackFileDir} 0755 root root -\n`);
      steps.push(`mkdir -p ${q(p.trackFileDir)}`);
    }
    steps.push(
      'systemctl daemon-reload',
      `systemctl enable --now dsm-${h.role}.service`,
      'keepalived -t -f /etc/keepalived/keepalived.conf',
      'systemctl enable keepalived.service',
      'systemctl restart keepalived.service',
    );
    if (spec.vipSync) {
      packages.push('hcloud-cli');
      sbin('dsm-vip-sync', vipSyncScript(spec, p, h.name));
      file(
        '/etc/systemd/system/dsm-vip-sync.service',
        '[Unit]\nDescription=dsm: cloud alias IP follows the VRRP VIP\nAfter=keepalived.service\n\n[Service]\nExecStart=/usr/local/sbin/dsm-vip-sync\nRestart=always\n\n[Install]\nWantedBy=multi-user.target\n',
      );
      steps.push('systemctl enable --now dsm-vip-sync.service');
    }
  } else if (h.role === 'storage') {
    const group = h.group as string;
    const g = spec.storageGroups[group] as StorageGroupSpec;
    const { config } = nodeConfigFor(spec, h.name);
    const first = Object.keys(g.hosts)[0] === h.name;
    const brick = fill(g.brickPath, { host: h.name, volume: group });
    packages.push('glusterfs-server', 'xfsprogs');
    file('/etc/dsm/storage.json', configText(config), '0640');
    const withKey = keyFile(config);
    sbin('dsm-prepare-brick', brickScript(g, brick));
    sbin('dsm-mount-group', mountScript(mountFor(spec, group, h.name)));
    if (first) sbin('dsm-gluster-steps', glusterStepsScript(groupSteps(spec, group), group, 3));
    const store = fill(g.mountPoint, { volume: group });
    file(
      '/etc/systemd/system/dsm-storage.service',
      // `+`: the mount runs as root; `gluster` group: the node's `gluster volume heal info`
      unit(
        'storage',
        rt,
        ['ExecStartPre=+/usr/local/sbin/dsm-mount-group', 'SupplementaryGroups=gluster'],
        [store],
      ),
    );
    steps.push(
      ...dsmUserSteps('storage', withKey),
      '/usr/local/sbin/dsm-prepare-brick',
      'systemctl enable --now glusterd.service',
      ...(first ? ['/usr/local/sbin/dsm-gluster-steps'] : []),
      '/usr/local/sbin/dsm-mount-group',
      // the volume's root belongs to the node (kept by the bricks: once per volume is enough)
      `chown ${DSM_USER}:${DSM_USER} ${q(store)}`,
      'systemctl daemon-reload',
      'systemctl enable --now dsm-storage.service',
    );
  } else if (h.role === 'gateway') {
    const { config } = nodeConfigFor(spec, h.name);
    file('/etc/dsm/gateway.json', configText(config), '0640');
    const withKey = keyFile(config);
    file('/etc/systemd/system/dsm-gateway.service', unit('gateway', rt));
    steps.push(
      ...dsmUserSteps('gateway', withKey),
      'systemctl daemon-reload',
      'systemctl enable --now dsm-gateway.service',
    );
  } else {
    const d = spec.data!;
    packages.push('mariadb-server', 'redis-server');
    file(
      '/etc/mysql/mariadb.conf.d/60-dsm.cnf',
      `[mysqld]\nbind-address = ${h.address}\nmax_connections = 500\n`,
    );
    file(
      '/etc/dsm/mysql-init.sql',
      `CREATE USER IF NOT EXISTS '${d.mysqlUser}'@'${d.allowFrom}' IDENTIFIED BY '${d.mysqlPassword}';\n` +
        `GRANT ALL PRIVILEGES ON \`tnv\\_%\`.* TO '${d.mysqlUser}'@'${d.allowFrom}';\nFLUSH PRIVILEGES;\n`,
      '0600',
    );
    file(
      '/etc/redis/redis.conf.d-dsm',
      `bind ${h.address} 127.0.0.1\nport ${d.redisPort}\nprotected-mode no\n`,
    );
    steps.push(
      'systemctl restart mariadb.service',
      'mysql </etc/dsm/mysql-init.sql',
      'grep -q "^include /etc/redis/redis.conf.d-dsm" /etc/redis/redis.conf || echo "include /etc/redis/redis.conf.d-dsm" >>/etc/redis/redis.conf',
      'systemctl restart redis-server.service',
    );
  }

  const what = h.role === 'storage' ? `storage, group ${h.group}` : h.role;
  sbin(
    'dsm-provision',
    `${SH_HEAD}# provisioning of ${h.name} (${what}) in environment ${spec.environment}\n${steps.join('\n')}\nlog "provisioned ${h.name}"\n`,
  );
  const doc = {
    hostname: h.name,
    package_update: true,
    packages,
    write_files: files.map((f) => ({
      path: f.path,
      owner: 'root:root',
      permissions: f.mode,
      content: f.content,
    })),
    runcmd: [['bash', '/usr/local/sbin/dsm-provision']],
  };
  const userData =
    '#cloud-config\n' +
    `# ${h.name} (${what}) of environment ${spec.environment}: rendered by infra/terraform/src/render-provisioning.ts\n` +
    '# from dsm.json with @dsm/ha; do not edit, re-render\n' +
    yamlStringify(doc, { blockQuote: 'literal', lineWidth: 0 });
  return { role: h.role, address: h.address, group: h.group, files, packages, userData };
}

// ---- one environment -------------------------------------------------------------------------

export function renderEnvironment(spec: EnvSpec, inputSha256: string): RenderedEnvironment {
  const out = new Map<string, string>();
  const hosts = new Map<string, RenderedHost>();
  const secrets = new Set<string>();
  const manifestHosts: Manifest['hosts'] = {};
  for (const h of hostsOf(spec)) {
    const r = renderHost(spec, h);
    hosts.set(h.name, r);
    const names: string[] = [];
    const put = (name: string, content: string) => {
      out.set(`${h.name}/${name}`, content);
      names.push(name);
    };
    put('user-data.yaml.tftpl', toTerraformTemplate(r.userData));
    for (const s of secretsIn(r.userData)) secrets.add(s);
    // the files that matter, one by one, for people and for the local lab
    for (const f of r.files) {
      const base = f.path.split('/').pop() as string;
      if (/\.(json|conf)$/.test(base) || /^dsm-(gluster-steps|mount-group)$/.test(base)) put(base, f.content);
    }
    if (h.role === 'storage') {
      const g = h.group as string;
      put('mount.json', `${JSON.stringify(mountFor(spec, g, h.name), null, 2)}\n`);
      if (Object.keys(spec.storageGroups[g]!.hosts)[0] === h.name)
        put('gluster-steps.json', `${JSON.stringify(groupSteps(spec, g), null, 2)}\n`);
    }
    manifestHosts[h.name] = {
      role: h.role,
      address: h.address,
      ...(h.group ? { group: h.group } : {}),
      files: names,
    };
  }
  const pair = (p: EnvSpec['trackers']): PairManifest => ({
    vip: p.vip,
    vipAddress: vipAddress(p.vip),
    port: p.port,
    endpoint: `${vipAddress(p.vip)}:${p.port}`,
    hosts: p.hosts,
    addresses: Object.values(p.hosts).map((a) => `${a}:${p.port}`),
  });
  const manifest: Manifest = {
    environment: spec.environment,
    inputSha256,
    renderer: 'infra/terraform/src/render-provisioning.ts (@dsm/ha renderVipPair, glusterGroupSteps)',
    secrets: [...secrets].sort(),
    trackers: pair(spec.trackers),
    idServers: pair(spec.idServers),
    storageGroups: Object.fromEntries(
      Object.entries(spec.storageGroups).map(([name, g]) => [
        name,
        {
          volume: name,
          port: g.port,
          mountPoint: fill(g.mountPoint, { volume: name }),
          brickSizeGb: g.brickSizeGb,
          hosts: g.hosts,
          storageAddresses: Object.values(g.hosts).map((a) => `${a}:${g.port}`),
        },
      ]),
    ),
    gateways: spec.gateways
      ? {
          port: spec.gateways.port,
          hosts: spec.gateways.hosts,
          upstreams: Object.values(spec.gateways.hosts).map((a) => `${a}:${spec.gateways!.port}`),
        }
      : null,
    data: spec.data
      ? (() => {
          const a = Object.values(spec.data.hosts)[0] as string;
          return { hosts: spec.data.hosts, mysql: `${a}:3306`, redis: `${a}:${spec.data.redisPort}` };
        })()
      : null,
    hosts: manifestHosts,
  };
  out.set('manifest.json', `${JSON.stringify(manifest, null, 2)}\n`);
  return { files: out, manifest, hosts };
}

/** Renders one environment into rendered/<env>/ (replacing what was there). */
export function writeRendered(env: string, root = RENDERED_DIR): { dir: string; files: number } {
  const { spec, inputSha256 } = loadEnvSpec(env);
  const r = renderEnvironment(spec, inputSha256);
  const dir = join(root, env);
  rmSync(dir, { recursive: true, force: true });
  for (const [rel, content] of r.files) {
    mkdirSync(dirname(join(dir, rel)), { recursive: true });
    writeFileSync(join(dir, rel), content);
  }
  return { dir, files: r.files.size };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const envs = process.argv.slice(2).length ? process.argv.slice(2) : listEnvironments();
  try {
    for (const env of envs) {
      const r = writeRendered(env);
      process.stdout.write(`rendered ${env}: ${r.files} files in ${r.dir}\n`);
    }
  } catch (e) {
    process.stderr.write(`render-provisioning: ${(e as Error).message}\n`);
    process.exit(1);
  }
}
