/**
 * The inputs of one environment: `environments/<env>/dsm.json`. The renderer reads it, and the
 * environment's Terraform reads the same file (`jsondecode(file("dsm.json"))`) for the host maps
 * it hands to the modules, so hosts, VIPs and groups are written down exactly once.
 */
import { z } from 'zod';

const IPV4 = /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/;
/** `{{secret:NAME}}` in any string: the value comes from Terraform's `secrets` variable at apply time. */
export const SECRET_MARK = /\{\{secret:([a-z][a-z0-9_]{0,63})\}\}/g;

const ipv4 = z.string().regex(IPV4, 'expected an IPv4 address');
const cidrAddress = z
  .string()
  .regex(/^[\d.]+\/\d{1,2}$/, 'expected address/prefix, e.g. 10.0.1.100/24')
  .refine((s) => IPV4.test(s.split('/')[0] ?? '') && Number(s.split('/')[1]) <= 32, 'bad address/prefix');
/** Host names are also the VM names, the node `hostname` and the rendered folder names. */
export const HOST_NAME = /^[a-z][a-z0-9-]{0,30}$/;
const hostName = z.string().regex(HOST_NAME, 'host names are 1-31 of [a-z0-9-], starting with a letter');
const hostsMap = z.record(hostName, ipv4);
const absPath = z.string().regex(/^\/[^\s'"$`\\]*$/, 'expected an absolute path without spaces or quotes');
const port = z.number().int().min(1).max(65535);
/** Node config keys beyond the ones the renderer derives (docs/configuration.md). */
const nodeConfig = z.record(z.string(), z.unknown()).default({});

const vipPair = z
  .object({
    /** name → address, master first. */
    hosts: hostsMap.refine((h) => Object.keys(h).length >= 2, 'a VIP pair needs at least two hosts'),
    /** `address/prefix` the pair holds (keepalived `virtual_ipaddress`). */
    vip: cidrAddress,
    /** VRRP router id, unique per VIP on the segment. */
    virtualRouterId: z.number().int().min(1).max(255),
    port,
    /** Interface the VIP lives on. */
    interface: z.string().regex(/^[A-Za-z0-9_.@-]{1,15}$/),
    advertIntMs: z.number().int().default(1000),
    /** How long a recovered master waits before it takes the VIP back (keepalived preempt_delay). */
    preemptDelayMs: z.number().int().min(0).max(1_000_000).default(5000),
    /** Unicast VRRP (clouds have no multicast). */
    unicast: z.boolean().default(false),
    /** Folder of the `<host>.force-fault` track files (omit: no track file). */
    trackFileDir: absPath.optional(),
    /** Address the node listens on (the VIP must reach it: 0.0.0.0). */
    listenHost: z.string().default('0.0.0.0'),
    config: nodeConfig,
  })
  .strict();

const storageGroup = z
  .object({
    /** Exactly three hosts: replica 3, or replica 2 + arbiter (the third). */
    hosts: hostsMap.refine((h) => Object.keys(h).length === 3, 'a storage group has exactly 3 hosts'),
    replica: z.union([z.literal(3), z.object({ replica: z.literal(2), arbiter: z.literal(1) }).strict()]),
    port: port.default(23000),
    /** Brick folder on each host; `{host}` and `{volume}` are replaced. */
    brickPath: absPath,
    /** Block device of the attached brick volume (formatted xfs once, mounted on the brick's parent). Empty: none. */
    brickDevice: z.union([absPath, z.literal('')]).default(''),
    /** Size of the attached brick volume the environment creates per host (0: none). */
    brickSizeGb: z.number().int().min(0).default(0),
    /** Where every member mounts the group volume (the storage's only store path). */
    mountPoint: absPath,
    /** FUSE client log, `{host}` replaced (omit: gluster's default). */
    mountLogFile: absPath.optional(),
    /** Bricks on the root filesystem (labs) need `force`. */
    force: z.boolean().default(false),
    pingTimeoutS: z.number().int().optional(),
    options: z.record(z.string(), z.string()).optional(),
    config: nodeConfig,
  })
  .strict();

export const envSpecSchema = z
  .object({
    $comment: z.string().optional(),
    /** Name of the environment (rendered/<environment>). */
    environment: z.string().regex(/^[a-z][a-z0-9-]{0,30}$/),
    /**
     * How a host gets Node and the dsm release. `null`: already there (the local lab runs the
     * checkout with the Node that renders).
     */
    install: z
      .object({
        /** A Node 20 linux-x64 tarball (.tar.xz). */
        nodeUrl: z.url(),
        nodeDir: absPath.default('/opt/node'),
        /** A dsm release tarball (`git archive` of a tag); installed with `npm ci --omit=dev`. */
        releaseUrl: z.url(),
        prefix: absPath.default('/opt/dsm'),
      })
      .strict()
      .nullable(),
    /** Moves a VIP in clouds whose network ignores gratuitous ARP. */
    vipSync: z
      .object({ kind: z.literal('hcloud'), network: z.string().min(1), tokenSecret: z.string().min(1) })
      .strict()
      .optional(),
    trackers: vipPair,
    idServers: vipPair,
    storageGroups: z
      .record(z.string().regex(/^[A-Za-z0-9]{1,16}$/, 'group names are 1-16 of [A-Za-z0-9]'), storageGroup)
      .refine((g) => Object.keys(g).length >= 1, 'at least one storage group'),
    gateways: z
      .object({
        hosts: hostsMap.refine((h) => Object.keys(h).length >= 1, 'at least one gateway host'),
        port: port.default(8080),
        config: nodeConfig,
      })
      .strict()
      .optional(),
    /**
     * Admin listeners (`/metrics`, `/healthz`, `/readyz`) on every node and gateway, on the host's
     * private address at its port + `adminPortOffset` (as `dsm up`), and `rendered/<env>/
     * prometheus.yml`, the scrape jobs of those hosts. On unless `null` (the local environment:
     * the HA lab it mirrors starts its nodes without admin listeners).
     */
    monitoring: z
      .object({
        adminPortOffset: z.number().int().min(1).max(64000).default(10000),
        /** Where the Prometheus host installs infra/observability/prometheus/dsm-alerts.yml. */
        rulesFile: absPath.default('/etc/prometheus/rules/dsm-alerts.yml'),
        scrapeIntervalS: z.number().int().min(1).max(3600).default(15),
      })
      .strict()
      .nullable()
      .prefault({}),
    /** MySQL (MariaDB) and Redis on one VM. Omit when the environment uses managed services. */
    data: z
      .object({
        hosts: hostsMap.refine((h) => Object.keys(h).length === 1, 'the data VM is one host'),
        mysqlUser: z
          .string()
          .regex(/^[a-z][a-z0-9_]{0,31}$/)
          .default('dsm'),
        mysqlPassword: z.string().min(1),
        /** MySQL host pattern the dsm user may connect from, e.g. `10.0.%`. */
        allowFrom: z.string().regex(/^[0-9.%]+$/),
        redisPort: port.default(6379),
      })
      .strict()
      .optional(),
  })
  .strict();

export type EnvSpec = z.infer<typeof envSpecSchema>;
export type VipPairSpec = EnvSpec['trackers'];
export type StorageGroupSpec = EnvSpec['storageGroups'][string];

export function parseEnvSpec(raw: unknown, where = 'dsm.json'): EnvSpec {
  const r = envSpecSchema.safeParse(raw);
  if (!r.success) {
    const i = r.error.issues[0];
    throw new Error(`${where}: ${i?.path.join('.') || '(root)'}: ${i?.message ?? 'invalid'}`);
  }
  return r.data;
}

/** The secret names a string uses. */
export function secretsIn(s: string): string[] {
  return [...s.matchAll(SECRET_MARK)].map((m) => m[1] as string);
}
