import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { DsmClient } from '@dsm/client';
import { nodeTransport } from '@dsm/client/node';
import { createLogger, type Logger } from '@dsm/common';
import { createKvStore, type KvStore } from '@dsm/kv';
import { parseAddress } from '@dsm/packets';
import { type ServerType, serve } from '@hono/node-server';
import { createApp, type GatewayApp } from './app.ts';
import { type GatewayConfig, parseListen } from './config.ts';
import { createPromMetrics } from './metrics.ts';

export interface StartGatewayOptions {
  log?: Logger;
  /** Use this store instead of opening `config.cache` (not closed by close()). */
  kv?: KvStore;
  /** Use this client instead of one built from `config.trackers` (not closed by close()). */
  client?: DsmClient;
}

export interface RunningGateway extends GatewayApp {
  ready: Record<string, unknown>;
  port: number;
  /** `http://host:port` */
  url: string;
  kv: KvStore;
  client: DsmClient;
  close(): Promise<void>;
}

/** The Node entry: the Hono app on @hono/node-server, prom-client metrics, the tus sweeper. */
export async function startGateway(
  config: GatewayConfig,
  opts: StartGatewayOptions = {},
): Promise<RunningGateway> {
  const log = opts.log ?? createLogger('gateway');
  const kv = opts.kv ?? createKvStore(config.cache);
  const client =
    opts.client ??
    new DsmClient({
      trackers: config.trackers.map(parseAddress),
      transport: nodeTransport,
      locateCacheMs: config.locateCacheMs,
      ioTimeoutMs: config.ioTimeoutMs,
      maxPerAddress: config.upstreamConnections,
    });
  const metrics = createPromMetrics();
  const built = createApp({ client, kv, config, log, metrics });
  const { host, port } = parseListen(config.listen);

  let server: ServerType;
  try {
    server = await new Promise<ServerType>((resolve, reject) => {
      const s = serve({ fetch: built.app.fetch, port, hostname: host }, () => resolve(s));
      s.once('error', reject);
    });
  } catch (e) {
    if (!opts.kv) await kv.close();
    if (!opts.client) await client.close();
    throw e;
  }
  // Uploads from phones can take long: no whole-request deadline, only one for the headers.
  const http = server as Server;
  http.requestTimeout = 0;
  http.headersTimeout = 60_000;
  http.keepAliveTimeout = 65_000;

  const bound = (server.address() as AddressInfo).port;
  const shownHost = host.includes(':') ? `[${host}]` : host;
  const url = `http://${shownHost === '0.0.0.0' ? '127.0.0.1' : shownHost}:${bound}`;

  let sweeping = false;
  const sweeper =
    config.tusSweepIntervalMs > 0
      ? setInterval(() => {
          if (sweeping) return;
          sweeping = true;
          built.tus
            .sweep()
            .catch((e) => log.warn({ err: e }, 'tus sweep failed'))
            .finally(() => {
              sweeping = false;
            });
        }, config.tusSweepIntervalMs)
      : undefined;
  sweeper?.unref();

  log.info({ url, trackers: config.trackers, auth: config.auth.mode }, 'gateway listening');
  let closed = false;
  return {
    ...built,
    ready: { role: 'gateway', listen: `${host}:${bound}`, url },
    port: bound,
    url,
    kv,
    client,
    async close() {
      if (closed) return;
      closed = true;
      if (sweeper) clearInterval(sweeper);
      await new Promise<void>((resolve) => {
        http.close(() => resolve());
        http.closeIdleConnections();
        // streams still running get a moment, then their sockets go
        setTimeout(() => http.closeAllConnections(), 2000).unref();
      });
      if (!opts.client) await client.close();
      if (!opts.kv) await kv.close();
    },
  };
}
