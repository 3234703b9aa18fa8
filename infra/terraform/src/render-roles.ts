/**
 * One host's provisioning, by role: the files it gets, the packages, and the steps of
 * `dsm-provision`, wrapped into one cloud-init document (`#cloud-config`, `write_files`, one
 * `runcmd`). Each role's writer adds its part to what every host gets (Node and the release).
 */
import { stringify as yamlStringify } from 'yaml';
import { groupSteps, mountFor, vipPairConfs } from './ha.ts';
import { fill, type HostInfo, RENDERER, type Role, runtimeOf } from './inputs.ts';
import { CLUSTER_KEY_FILE, CLUSTER_KEY_SECRET, configText, nodeConfigFor } from './node-configs.ts';
import type { EnvSpec, StorageGroupSpec } from './spec.ts';
import {
  brickScript,
  DSM_USER,
  dsmUserSteps,
  glusterStepsScript,
  installScript,
  mariadbConf,
  mountScript,
  mysqlInitSql,
  q,
  redisConf,
  SH_HEAD,
  unit,
  VIP_SYNC_UNIT,
  vipSyncScript,
} from './templates.ts';

export interface RenderedHost {
  role: Role;
  address: string;
  group?: string;
  /** Paths on the host → content (with `{{secret:x}}` marks). */
  files: { path: string; mode: string; content: string }[];
  packages: string[];
  userData: string;
}

/** What a role's writer adds to: the host's files, packages and provisioning steps. */
interface HostBuild {
  spec: EnvSpec;
  h: HostInfo;
  rt: ReturnType<typeof runtimeOf>;
  packages: string[];
  steps: string[];
  file: (path: string, content: string, mode?: string) => void;
  sbin: (name: string, content: string) => void;
  /** Writes the cluster key when the node config reads it; true if it does. */
  keyFile: (config: Record<string, unknown>) => boolean;
}

/** A tracker or id server: its node, keepalived with the pair's VIP, and the optional VIP sync. */
function pairHost({ spec, h, rt, packages, steps, file, sbin, keyFile }: HostBuild): void {
  const role = h.role as 'tracker' | 'id';
  const p = role === 'tracker' ? spec.trackers : spec.idServers;
  const { config } = nodeConfigFor(spec, h.name);
  const conf = vipPairConfs(spec, role).find((c) => c.name === h.name)!.conf;
  packages.push('keepalived');
  file(`/etc/dsm/${role}.json`, configText(config), '0640');
  const withKey = keyFile(config);
  file('/etc/keepalived/keepalived.conf', conf, '0640');
  file(`/etc/systemd/system/dsm-${role}.service`, unit(role, rt));
  steps.push(...dsmUserSteps(role, withKey));
  if (p.trackFileDir) {
    // the track file's folder must exist before keepalived starts, also after a reboot (/run)
    file('/etc/tmpfiles.d/dsm.conf', `d ${p.trackFileDir} 0755 root root -\n`);
    steps.push(`mkdir -p ${q(p.trackFileDir)}`);
  }
  steps.push(
    'systemctl daemon-reload',
    `systemctl enable --now dsm-${role}.service`,
    'keepalived -t -f /etc/keepalived/keepalived.conf',
    'systemctl enable keepalived.service',
    'systemctl restart keepalived.service',
  );
  if (spec.vipSync) {
    packages.push('hcloud-cli');
    sbin('dsm-vip-sync', vipSyncScript(spec, p, h.name));
    file('/etc/systemd/system/dsm-vip-sync.service', VIP_SYNC_UNIT);
    steps.push('systemctl enable --now dsm-vip-sync.service');
  }
}

/** A storage: brick, glusterd, the group's volume steps (first host only), the mount, the node. */
function storageHost({ spec, h, rt, packages, steps, file, sbin, keyFile }: HostBuild): void {
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
}

function gatewayHost({ spec, h, rt, steps, file, keyFile }: HostBuild): void {
  const { config } = nodeConfigFor(spec, h.name);
  file('/etc/dsm/gateway.json', configText(config), '0640');
  const withKey = keyFile(config);
  file('/etc/systemd/system/dsm-gateway.service', unit('gateway', rt));
  steps.push(
    ...dsmUserSteps('gateway', withKey),
    'systemctl daemon-reload',
    'systemctl enable --now dsm-gateway.service',
  );
}

/** MariaDB and Redis on one host (environments without managed services). */
function dataHost({ spec, h, packages, steps, file }: HostBuild): void {
  const d = spec.data!;
  packages.push('mariadb-server', 'redis-server');
  file('/etc/mysql/mariadb.conf.d/60-dsm.cnf', mariadbConf(h.address));
  file('/etc/dsm/mysql-init.sql', mysqlInitSql(d), '0600');
  file('/etc/redis/redis.conf.d-dsm', redisConf(h.address, d));
  steps.push(
    'systemctl restart mariadb.service',
    'mysql </etc/dsm/mysql-init.sql',
    'grep -q "^include /etc/redis/redis.conf.d-dsm" /etc/redis/redis.conf || echo "include /etc/redis/redis.conf.d-dsm" >>/etc/redis/redis.conf',
    'systemctl restart redis-server.service',
  );
}

const WRITERS: Record<Role, (b: HostBuild) => void> = {
  tracker: pairHost,
  id: pairHost,
  storage: storageHost,
  gateway: gatewayHost,
  data: dataHost,
};

export function renderHost(spec: EnvSpec, h: HostInfo): RenderedHost {
  const files: RenderedHost['files'] = [];
  const file = (path: string, content: string, mode = '0644') => {
    files.push({ path, mode, content });
  };
  const b: HostBuild = {
    spec,
    h,
    rt: runtimeOf(spec),
    packages: ['curl', 'xz-utils'],
    steps: [installScript(spec)],
    file,
    sbin: (name, content) => file(`/usr/local/sbin/${name}`, content, '0755'),
    // the cluster key, when this host's node config reads it (group dsm, like the config)
    keyFile: (config) => {
      const uses = JSON.stringify(config).includes(JSON.stringify(CLUSTER_KEY_FILE));
      if (uses) file(CLUSTER_KEY_FILE, `{{secret:${CLUSTER_KEY_SECRET}}}\n`, '0640');
      return uses;
    },
  };
  WRITERS[h.role](b);

  const what = h.role === 'storage' ? `storage, group ${h.group}` : h.role;
  b.sbin(
    'dsm-provision',
    `${SH_HEAD}# provisioning of ${h.name} (${what}) in environment ${spec.environment}\n${b.steps.join('\n')}\nlog "provisioned ${h.name}"\n`,
  );
  const doc = {
    hostname: h.name,
    package_update: true,
    packages: b.packages,
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
    `# ${h.name} (${what}) of environment ${spec.environment}: rendered by ${RENDERER}\n` +
    '# from dsm.json with @dsm/ha; do not edit, re-render\n' +
    yamlStringify(doc, { blockQuote: 'literal', lineWidth: 0 });
  return { role: h.role, address: h.address, group: h.group, files, packages: b.packages, userData };
}
