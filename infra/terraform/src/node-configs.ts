/**
 * Node configs (`/etc/dsm/<role>.json`): the keys derived from the topology, the rest from the
 * environment's `config`, checked against each node's own `configSchema`; node-protocol auth
 * with the cluster key, and the gateway's token auth a networked environment requires.
 */
import { parseConfig } from '@dsm/common';
import { configSchema as gatewaySchema } from '@dsm/gateway';
import { configSchema as idSchema } from '@dsm/id-node';
import { configSchema as storageSchema } from '@dsm/storage-node';
import { configSchema as trackerSchema } from '@dsm/tracker-node';
import { fill, type HostInfo, hostsOf, vipAddress } from './inputs.ts';
import { type EnvSpec, SECRET_MARK, type StorageGroupSpec } from './spec.ts';

const SCHEMAS = {
  tracker: trackerSchema,
  id: idSchema,
  storage: storageSchema,
  gateway: gatewaySchema,
} as const;
export type NodeRole = keyof typeof SCHEMAS;

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

/** The roles Prometheus scrapes, each a job `dsm-<role>` (infra/observability's rules). */
export const SCRAPED_ROLES = ['tracker', 'id', 'storage', 'gateway'] as const;

/**
 * `host:port` of a host's admin listener: its private address, its dsm port + the environment's
 * `monitoring.adminPortOffset` (10000: tracker 31000, id 32000, storage 33000, gateway 18080
 * with the default ports). undefined = the environment renders no admin listeners.
 */
export function adminAddress(spec: EnvSpec, h: HostInfo): string | undefined {
  const m = spec.monitoring;
  if (!m) return undefined;
  let base: number;
  if (h.role === 'tracker') base = spec.trackers.port;
  else if (h.role === 'id') base = spec.idServers.port;
  else if (h.role === 'storage') base = (spec.storageGroups[h.group as string] as StorageGroupSpec).port;
  else if (h.role === 'gateway') base = spec.gateways!.port;
  else return undefined;
  const port = base + m.adminPortOffset;
  if (port > 65535)
    throw new Error(
      `${h.name}: admin port ${base} + ${m.adminPortOffset} is above 65535 (monitoring.adminPortOffset)`,
    );
  return `${h.address}:${port}`;
}

function adminListenerOf(spec: EnvSpec, h: HostInfo, vip?: string): Record<string, unknown> {
  const listen = adminAddress(spec, h);
  if (listen === undefined) return {};
  return { admin: { listen, ...(vip ? { vips: [vipAddress(vip)] } : {}) } };
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
          // admin.vips: dsm_node_vip_held says which of the pair holds the VIP
          { listen: `${p.listenHost}:${p.port}`, hostname: h.name, ...adminListenerOf(spec, h, p.vip) },
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
            ...adminListenerOf(spec, h),
          },
          withNodeAuth('storage', g.config),
        ),
      };
    }
    case 'gateway': {
      const gw = spec.gateways!;
      const { admin: givenAdmin, ...rest } = gw.config as { admin?: Record<string, unknown> };
      const listen = adminAddress(spec, h);
      if (listen !== undefined && givenAdmin && 'listen' in givenAdmin)
        throw new Error(
          'gateway config: "admin.listen" is derived from the topology (monitoring), do not set it',
        );
      // the status page: the id servers it PINGs, the admin listeners it asks which node holds a VIP
      const pairAdmins = hostsOf(spec)
        .filter((x) => x.role === 'tracker' || x.role === 'id')
        .map((x) => `http://${adminAddress(spec, x)}`);
      const admin =
        listen === undefined
          ? givenAdmin
          : {
              listen,
              idServers: Object.values(i.hosts).map((a) => `${a}:${i.port}`),
              nodeAdmins: pairAdmins,
              ...givenAdmin,
            };
      const config = nodeConfig(
        'gateway',
        {
          listen: `0.0.0.0:${gw.port}`,
          trackers: [`${vipAddress(t.vip)}:${t.port}`],
          ...(admin ? { admin } : {}),
        },
        // the nodes require the cluster key: the gateway proves it on every connection
        'cluster' in rest ? rest : { ...rest, cluster: { keyId: CLUSTER_KEY_ID, keyFile: CLUSTER_KEY_FILE } },
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
