import { readFileSync } from 'node:fs';
import {
  createServer,
  type IncomingMessage,
  type RequestListener,
  type Server,
  type ServerOptions,
  type ServerResponse,
} from 'node:http';
import { type AddressInfo, BlockList, isIP, type Socket } from 'node:net';
import { resolve } from 'node:path';
import { type ClusterKey, clusterKey, DsmClient, type Transport } from '@dsm/client';
import { createNodeTransport, nodeTransport } from '@dsm/client/node';
import { createLogger, DsmError, ErrorCode, type Logger } from '@dsm/common';
import { ADMIN_SERVER_OPTIONS, boundAdminServer } from '@dsm/common/admin-http';
import { messageOf } from '@dsm/common/errors';
import { createKvStore, type KvStore } from '@dsm/kv';
import { parseAddress } from '@dsm/packets';
import { type ServerType, serve } from '@hono/node-server';
import type { Registry } from 'prom-client';
import { createAdminApp } from './admin.ts';
import { createApp, type FastReply, type GatewayApp } from './app.ts';
import { type GatewayConfig, parseListen } from './config.ts';
import { clientKey } from './edge-limits.ts';
import { SMALL_BODY_BYTES } from './files.ts';
import { HotLane } from './hot-lane.ts';
import { createPromMetrics } from './metrics.ts';
import { GatewayErrorCode } from './problem.ts';
import { requestBody } from './streams.ts';

export interface StartGatewayOptions {
  log?: Logger;
  /** Use this store instead of opening `config.cache` (not closed by close()). */
  kv?: KvStore;
  /** Use this client instead of one built from `config.trackers` (not closed by close()). */
  client?: DsmClient;
  /**
   * Sets `X-Dsm-Worker: <value>` on every response (cluster.ts passes the worker's pid when
   * `DSM_GATEWAY_WORKER_HEADER=1`: tests and debugging only, it tells which process answered).
   */
  workerHeader?: string;
}

export interface RunningGateway extends GatewayApp {
  /** The registry /metrics renders (a cluster's primary aggregates the workers' registries). */
  registry: Registry;
  ready: Record<string, unknown>;
  port: number;
  /** `http://host:port` */
  url: string;
  /** The admin listener (`admin.listen`), when there is one. */
  adminUrl?: string;
  kv: KvStore;
  client: DsmClient;
  /** The hot lane in front of node:http (config `hotLane`), null when off. */
  hotLane: HotLane | null;
  close(): Promise<void>;
}

/**
 * Reads of small replies (SMALL_BODY_BYTES, a small GET's) pipelined on up to 2 connections per
 * storage, 32 in flight on each (2 MiB of replies at most); more take connections of their own.
 */
const UPSTREAM_PIPELINE = { pipes: 2, depth: 32, maxReplyBytes: SMALL_BODY_BYTES };

/** The Node entry: the Hono app on @hono/node-server, prom-client metrics, the tus sweeper. */

export async function startGateway(
  config: GatewayConfig,
  opts: StartGatewayOptions = {},
): Promise<RunningGateway> {
  const log = opts.log ?? createLogger('gateway');
  const kv = opts.kv ?? createKvStore(config.cache, { memoryMaxKeys: config.memoryCacheMaxKeys });
  const client =
    opts.client ??
    new DsmClient({
      trackers: config.trackers.map(parseAddress),
      ...clusterLink(config),
      locateCacheMs: config.locateCacheMs,
      locateCacheMax: config.locateCacheMax,
      ioTimeoutMs: config.ioTimeoutMs,
      maxPerAddress: config.upstreamConnections,
      maxQueue: config.limits.upstreamQueue,
      acquireTimeoutMs: config.timeouts.upstreamQueueMs,
      // small GETs' reads share a few kept connections per storage (@dsm/client pipeline.ts)
      pipeline: UPSTREAM_PIPELINE,
    });
  const metrics = createPromMetrics();
  const built = createApp({ client, kv, config, log, metrics });
  const { host, port } = parseListen(config.listen);
  const guard = new ConnectionGuard(config, log);

  let server: ServerType;
  // plain connections start in the hot lane (hot-lane.ts)
  let lane: HotLane | null = null;
  try {
    server = await new Promise<ServerType>((resolve, reject) => {
      const s = serve(
        {
          fetch: guard.wrap(built.app.fetch),
          // the hot request (a small file's GET) skips the app (app.ts fastFile)
          createServer: ((options: ServerOptions, listener: RequestListener) =>
            createServer(options, withFastPath(built, guard, listener, log))) as never,
          port,
          hostname: host,
          serverOptions: edgeServerOptions(config),
        },
        () => resolve(s),
      );
      guard.attach(s as Server);
      if (config.hotLane) {
        const proxies = guard.proxies;
        const t = config.timeouts;
        lane = new HotLane({
          fastFile: built.fastFile,
          fastUpload: built.fastUpload,
          clientOf: (peer, forwardedFor) => clientKey(proxies.clientFor(peer, forwardedFor)),
          isProxy: (peer) => proxies.has(peer),
          maxHeaderBytes: config.limits.maxHeaderBytes,
          headersMs: t.headersMs,
          keepAliveMs: t.keepAliveMs,
          downloadIdleMs: t.downloadIdleMs,
          bodyIdleMs: t.bodyIdleMs,
          ...(opts.workerHeader !== undefined ? { workerHeader: opts.workerHeader } : {}),
          log,
        });
        if (!lane.attach(s as Server, (socket) => guard.refused(socket))) lane = null;
      }
      const tag = opts.workerHeader;
      if (tag !== undefined)
        (s as Server).prependListener('request', (_req: IncomingMessage, res: ServerResponse) => {
          res.setHeader('X-Dsm-Worker', tag);
        });
      s.once('error', reject);
    });
  } catch (e) {
    if (!opts.kv) await kv.close();
    if (!opts.client) await client.close();
    throw e;
  }
  const http = server as Server;

  const bound = (server.address() as AddressInfo).port;
  const shownHost = host.includes(':') ? `[${host}]` : host;
  const url = `http://${shownHost === '0.0.0.0' ? '127.0.0.1' : shownHost}:${bound}`;

  // operators' listener (metrics, readiness details): admin.ts
  let admin: { server: Server; url: string } | undefined;
  if (config.admin.listen) {
    try {
      admin = await listenAdmin(createAdminApp(built.core).fetch, config.admin.listen);
    } catch (e) {
      http.close();
      http.closeAllConnections();
      if (!opts.kv) await kv.close();
      if (!opts.client) await client.close();
      throw e;
    }
  }

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
    registry: metrics.registry,
    ready: { role: 'gateway', listen: `${host}:${bound}`, url, ...(admin ? { admin: admin.url } : {}) },
    port: bound,
    url,
    ...(admin ? { adminUrl: admin.url } : {}),
    kv,
    client,
    hotLane: lane,
    async close() {
      if (closed) return;
      closed = true;
      if (sweeper) clearInterval(sweeper);
      if (admin) {
        const a = admin.server;
        await new Promise<void>((resolve) => {
          a.close(() => resolve());
          a.closeAllConnections();
        });
      }
      await new Promise<void>((resolve) => {
        http.close(() => resolve());
        http.closeIdleConnections();
        lane?.close();
        // streams still running get a moment, then their sockets go
        setTimeout(() => http.closeAllConnections(), 2000).unref();
      });
      if (!opts.client) await client.close();
      if (!opts.kv) await kv.close();
    },
  };
}

async function listenAdmin(
  fetch: (req: Request) => Response | Promise<Response>,
  listen: string,
): Promise<{ server: Server; url: string }> {
  const { host, port } = parseListen(listen);
  const server = await new Promise<ServerType>((resolve, reject) => {
    const s = serve({ fetch, port, hostname: host, serverOptions: { ...ADMIN_SERVER_OPTIONS } }, () =>
      resolve(s),
    );
    s.once('error', reject);
  });
  // the bounds of every node's admin listener: 64 connections, 5 s of silence closes one
  boundAdminServer(server as Server);
  const shown = host.includes(':') ? `[${host}]` : host;
  const bound = (server.address() as AddressInfo).port;
  return { server: server as Server, url: `http://${shown === '0.0.0.0' ? '127.0.0.1' : shown}:${bound}` };
}

/**
 * Node's HTTP server limits: uploads from phones can take long, so there is no whole-request
 * deadline; the head has one, bodies and downloads have inactivity timeouts (ConnectionGuard).
 */
export function edgeServerOptions(config: GatewayConfig): ServerOptions {
  const t = config.timeouts;
  return {
    maxHeaderSize: config.limits.maxHeaderBytes,
    requestTimeout: 0,
    headersTimeout: t.headersMs,
    keepAliveTimeout: t.keepAliveMs,
    // how often Node checks headersTimeout (default 30 s, coarser than a small headersMs)
    connectionsCheckingInterval: Math.max(100, Math.min(30_000, Math.floor(t.headersMs / 4))),
  };
}

const tooManyConnections = (() => {
  const body = JSON.stringify({
    type: 'urn:dsm:problem:too-many-requests',
    title: 'Too Many Requests',
    status: 429,
    detail: 'too many connections from this address',
    code: GatewayErrorCode.TOO_MANY_REQUESTS,
  });
  return (
    'HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/problem+json\r\n' +
    `Retry-After: 1\r\nConnection: close\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`
  );
})();

/**
 * Per-socket rules of the Node entry: connections per client address, and the inactivity
 * timeouts of each phase of a request (Node's socket timeout counts silence in both
 * directions: bytes read reset it, and so do writes the client's window lets through).
 *
 * - reading a request body: `timeouts.bodyIdleMs` (a stalled upload is cut, a slow one is not);
 * - after the body (or from the start when there is none): `timeouts.downloadIdleMs`, so a
 *   client that reads nothing of the reply is cut and the download's storage stream cancelled
 *   with it. The wait for the storages before the reply counts too; `ioTimeoutMs` (shorter by
 *   default) bounds that wait first.
 *
 * A socket that times out is destroyed by Node (nothing listens for 'timeout').
 */
class ConnectionGuard {
  readonly #perAddress = new Map<string, number>();
  readonly #refused = new WeakSet<Socket>();
  readonly #cfg: GatewayConfig;
  readonly #log: Logger;
  readonly #proxies: TrustedProxies;

  constructor(config: GatewayConfig, log: Logger) {
    this.#cfg = config;
    this.#log = log;
    this.#proxies = new TrustedProxies(config.limits.trustedProxies);
  }

  attach(server: Server): void {
    const max = this.#cfg.limits.connectionsPerClient;
    server.on('connection', (socket: Socket) => {
      // a load balancer / CDN edge carries many clients on its connections
      if (this.#proxies.has(socket.remoteAddress ?? '')) return;
      const addr = clientKey(socket.remoteAddress ?? 'unknown');
      const n = this.#perAddress.get(addr) ?? 0;
      if (n >= max) {
        this.#refused.add(socket);
        this.#log.debug({ addr, open: n }, 'connection refused: too many from this address');
        socket.end(tooManyConnections);
        setTimeout(() => socket.destroy(), 1000).unref();
        return;
      }
      this.#perAddress.set(addr, n + 1);
      socket.once('close', () => {
        const left = (this.#perAddress.get(addr) ?? 1) - 1;
        if (left <= 0) this.#perAddress.delete(addr);
        else this.#perAddress.set(addr, left);
      });
    });
    // prependListener: before the app's handler, so the timeout is set before any reply byte
    server.prependListener('request', (req: IncomingMessage, res: ServerResponse) => {
      (req as ClientAddressed).dsmClientAddress = this.#proxies.clientOf(req);
      this.#phases(req, res);
    });
  }

  #phases(req: IncomingMessage, res: ServerResponse): void {
    const socket = req.socket;
    const t = this.#cfg.timeouts;
    const len = req.headers['content-length'];
    const hasBody = (len !== undefined && len !== '0') || req.headers['transfer-encoding'] !== undefined;
    if (hasBody && !req.complete) {
      socket.setTimeout(t.bodyIdleMs);
      req.once('end', () => {
        if (!socket.destroyed && !res.writableFinished) socket.setTimeout(t.downloadIdleMs);
      });
    } else socket.setTimeout(t.downloadIdleMs);
  }

  /** The socket was refused by the per-address cap (it is closing). */
  refused(socket: Socket): boolean {
    return this.#refused.has(socket);
  }

  /** The trusted proxies (`limits.trustedProxies`). */
  get proxies(): TrustedProxies {
    return this.#proxies;
  }

  /** Requests on a socket refused by the per-address cap are not handled (it is closing). */
  wrap<E>(fetch: (req: Request, env: E) => Response | Promise<Response>) {
    return (req: Request, env: E): Response | Promise<Response> => {
      const socket = (env as { incoming?: IncomingMessage } | undefined)?.incoming?.socket;
      if (socket && this.#refused.has(socket)) return new Response(null, { status: 429 });
      return fetch(req, env);
    };
  }
}

/**
 * The request listener: a request the fast path takes (app.ts fastFile) is answered from its
 * reply, written whole with writeHead + end; any other goes to the app (`listener`, Hono's).
 */
function withFastPath(
  built: GatewayApp,
  guard: ConnectionGuard,
  listener: RequestListener,
  log: Logger,
): RequestListener {
  return (req, res) => {
    const socket = req.socket;
    if (guard.refused(socket)) return listener(req, res);
    const headers = req.headers;
    const method = req.method ?? '';
    const fast = {
      method,
      target: req.url ?? '',
      header: (name: string) => {
        const v = headers[name];
        return typeof v === 'string' || v === undefined ? v : v.join(', ');
      },
      client: clientKey((req as ClientAddressed).dsmClientAddress ?? socket.remoteAddress ?? 'unknown'),
    };
    const p =
      method === 'POST'
        ? built.fastUpload({
            ...fast,
            secure: (socket as { encrypted?: boolean }).encrypted === true,
            body: () => requestBody({ incoming: req }, () => null),
          })
        : built.fastFile(fast);
    if (!p) return listener(req, res);
    if (!(p instanceof Promise)) return send(res, p);
    p.then(
      (reply) => (reply ? send(res, reply) : listener(req, res)),
      (e: unknown) => {
        log.error({ err: e }, 'request failed');
        res.destroy();
      },
    );
  };
}

/** A fast-path reply, written whole. */
function send(res: ServerResponse, reply: FastReply): void {
  res.writeHead(reply.status, reply.shared ? { ...reply.shared, ...reply.headers } : reply.headers);
  res.end(reply.body ?? undefined);
}

/** The address a request's per-client caps count under (read by the app, see clientAddress). */
type ClientAddressed = IncomingMessage & { dsmClientAddress?: string };

/**
 * `limits.trustedProxies`: a request from one of them counts under the client its
 * `X-Forwarded-For` names (the right-most entry that is not a trusted proxy itself); from any
 * other peer the header is ignored, so a client cannot choose its own count.
 */
export class TrustedProxies {
  readonly #list: BlockList | null;

  constructor(entries: readonly string[]) {
    if (entries.length === 0) {
      this.#list = null;
      return;
    }
    const list = new BlockList();
    for (const e of entries) {
      const [ip = '', bits] = e.split('/');
      const family = isIP(ip);
      const max = family === 6 ? 128 : 32;
      if (family === 0 || (bits !== undefined && !(/^\d+$/.test(bits) && Number(bits) <= max))) {
        throw new DsmError(
          ErrorCode.CONFIG,
          `config key "limits.trustedProxies": not an IP address or CIDR block: ${e}`,
        );
      }
      const type = family === 6 ? 'ipv6' : 'ipv4';
      if (bits === undefined) list.addAddress(ip, type);
      else list.addSubnet(ip, Number(bits), type);
    }
    this.#list = list;
  }

  has(address: string): boolean {
    if (!this.#list) return false;
    const a = address.startsWith('::ffff:') && isIP(address.slice(7)) === 4 ? address.slice(7) : address;
    const family = isIP(a);
    return family !== 0 && this.#list.check(a, family === 6 ? 'ipv6' : 'ipv4');
  }

  /** The client's address: the socket's peer, or what a trusted proxy says it forwarded. */
  clientOf(req: IncomingMessage): string {
    const header = req.headers['x-forwarded-for'];
    return this.clientFor(
      req.socket.remoteAddress ?? 'unknown',
      Array.isArray(header) ? header.join(',') : header,
    );
  }

  /** clientOf for a request from `peer` with this X-Forwarded-For (several joined by ","). */
  clientFor(peer: string, forwardedFor: string | undefined): string {
    if (!this.has(peer)) return peer;
    const text = forwardedFor ?? '';
    // bounded: a header is at most limits.maxHeaderBytes; look at the last 32 hops only
    const hops = text
      .split(',')
      .slice(-32)
      .map((h) => h.trim());
    for (let i = hops.length - 1; i >= 0; i--) {
      const hop = hops[i] as string;
      if (isIP(hop) === 0) return peer; // a malformed hop: nothing left of it can be trusted
      if (!this.has(hop)) return hop;
    }
    return peer;
  }
}

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
      throw new DsmError(ErrorCode.CONFIG, `config key "${key}": cannot read ${file}: ${messageOf(e)}`);
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

// the multi-process entry (`gateway.workers`), for `dsm gateway`
export { GatewayPrimary, gatewayWorkerCount, isGatewayWorker, runGatewayCluster } from './cluster.ts';
