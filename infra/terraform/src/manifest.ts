/**
 * `rendered/<env>/manifest.json`: what the Terraform modules check the environment against
 * (inputs' SHA-256, hosts, VIPs, ports, the secrets the rendered files use) and what they output
 * (endpoints, storage addresses, upstreams), for people and the tests too.
 */
import { fill, RENDERER, type Role, vipAddress } from './inputs.ts';
import type { ScrapeTargets } from './prometheus.ts';
import type { EnvSpec } from './spec.ts';

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
  /** Admin listeners and the rendered scrape config (prometheus.yml); null = none rendered. */
  monitoring: (ScrapeTargets & { adminPortOffset: number; prometheusConfig: string }) | null;
}

export interface PairManifest {
  vip: string;
  vipAddress: string;
  port: number;
  endpoint: string;
  hosts: Record<string, string>;
  addresses: string[];
}

/** The manifest of an environment; `hosts` and `secrets` come from rendering its hosts. */
export function buildManifest(
  spec: EnvSpec,
  inputSha256: string,
  secrets: Iterable<string>,
  manifestHosts: Manifest['hosts'],
  scrape: ScrapeTargets | null = null,
): Manifest {
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
    renderer: `${RENDERER} (@dsm/ha renderVipPair, glusterGroupSteps)`,
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
    monitoring:
      scrape && spec.monitoring
        ? { adminPortOffset: spec.monitoring.adminPortOffset, prometheusConfig: 'prometheus.yml', ...scrape }
        : null,
  };
  return manifest;
}
