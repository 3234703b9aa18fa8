import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { type ClusterKey, clusterKey, type Transport } from '@dsm/client';
import { createNodeTransport, nodeTransport } from '@dsm/client/node';
import { DsmError, ErrorCode } from '@dsm/common';
import type { GatewayConfig } from './config.ts';

/**
 * The Node entry's way to the nodes (`cluster` in the config): the transport (TLS when
 * `cluster.tls` is "on") and the cluster key, from `$DSM_CLUSTER_KEY` or `cluster.keyFile`
 * (relative to the config file). No key configured = no node-protocol auth.
 */
export function clusterLink(
  config: GatewayConfig & { configDir?: string },
  env: Record<string, string | undefined> = process.env,
): { transport: Transport; auth?: ClusterKey } {
  const c = config.cluster;
  const dir = config.configDir ?? process.cwd();
  const read = (file: string, key: string): string => {
    try {
      return readFileSync(resolve(dir, file), 'utf8');
    } catch (e) {
      throw new DsmError(
        ErrorCode.CONFIG,
        `config key "${key}": cannot read ${file}: ${(e as Error).message}`,
      );
    }
  };
  let auth: ClusterKey | undefined;
  if (env.DSM_CLUSTER_KEY) auth = clusterKey(c.keyId, env.DSM_CLUSTER_KEY, 'DSM_CLUSTER_KEY');
  else if (c.keyFile)
    auth = clusterKey(c.keyId, read(c.keyFile, 'cluster.keyFile'), 'config key "cluster.keyFile"');
  const transport =
    c.tls === 'on'
      ? createNodeTransport({
          tls: {
            ca: c.caFile ? read(c.caFile, 'cluster.caFile') : undefined,
            servername: c.servername || undefined,
          },
        })
      : nodeTransport;
  return { transport, auth };
}
