import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { type BlockList, isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import { DsmError, ErrorCode, type Logger, listenAddress, messageOf, parseListen } from '@dsm/common';
import { ADMIN_SERVER_OPTIONS, boundAdminServer } from '@dsm/common/admin-http';
import { formatAddress } from '@dsm/packets';
import { z } from 'zod';
import type { NodeMetrics } from './metrics.ts';
import { addressAllowed } from './security.ts';

/**
 * The `admin` key every node's config has: an HTTP listener for operators serving `/metrics`
 * (Prometheus text), `/healthz` (the process answers) and `/readyz` (it can serve: database,
 * cache, links). Empty `listen` (the default) = none; `dsm up` gives every node one on loopback.
 * It obeys the node's `allowFrom`: keep it on loopback or the monitoring network.
 */
export const nodeAdminShape = {
  admin: z
    .object({
      /** `host:port` of the admin listener; empty = none. */
      listen: z.union([z.literal(''), listenAddress]).default(''),
      /**
       * Virtual IPs this node may hold (its keepalived pair's VIP): `dsm_node_vip_held{vip}` is 1
       * while a local interface has the address, so a dashboard shows the holder and an alert
       * sees the VIP flapping.
       */
      vips: z
        .array(z.string().refine((a) => isIP(a) !== 0, 'expected an IP address (no prefix length)'))
        .max(16)
        .default([]),
    })
    .strict()
    .prefault({}),
};

/** One check of `/readyz`. */
export interface ReadyCheck {
  name: string;
  ok: boolean;
  error?: string;
}

/** What `/readyz` reports; the node is ready when every check is ok. */
export type Readiness = () => Promise<ReadyCheck[]>;

export interface AdminListener {
  /** `http://host:port` as bound. */
  url: string;
  close(): Promise<void>;
}

/** A readiness check that has not answered in this time counts as failed. */
const READY_CHECK_TIMEOUT_MS = 2000;

/**
 * Starts a node's admin listener. Only GET/HEAD of the three paths are served; anything else is
 * 404/405 with a small JSON body. Bounded: headers within 5 s, a request within 10 s, at most
 * 64 connections, keep-alive 5 s.
 */
export async function startAdminListener(opts: {
  listen: string;
  metrics: NodeMetrics;
  ready: Readiness;
  allow: BlockList | null;
  log: Logger;
}): Promise<AdminListener> {
  const { metrics, ready, allow, log } = opts;
  const send = (res: ServerResponse, status: number, body: string, type = 'application/json') => {
    res.writeHead(status, {
      'Content-Type': type,
      'Content-Length': Buffer.byteLength(body),
      'Cache-Control': 'no-store',
    });
    res.end(res.req.method === 'HEAD' ? undefined : body);
  };
  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const path = (req.url ?? '/').split('?', 1)[0];
    if (path !== '/metrics' && path !== '/healthz' && path !== '/readyz')
      return send(
        res,
        404,
        JSON.stringify({ error: 'no such path', paths: ['/metrics', '/healthz', '/readyz'] }),
      );
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('Allow', 'GET, HEAD');
      return send(res, 405, JSON.stringify({ error: 'only GET and HEAD' }));
    }
    if (path === '/healthz') return send(res, 200, JSON.stringify({ status: 'ok' }));
    if (path === '/metrics') {
      const m = await metrics.render();
      return send(res, 200, m.body, m.contentType);
    }
    const checks = await withTimeout(ready(), READY_CHECK_TIMEOUT_MS).catch((e): ReadyCheck[] => [
      { name: 'readiness', ok: false, error: messageOf(e) },
    ]);
    const ok = checks.every((c) => c.ok);
    return send(res, ok ? 200 : 503, JSON.stringify({ status: ok ? 'ready' : 'not ready', checks }));
  };
  const server: Server = createServer({ ...ADMIN_SERVER_OPTIONS }, (req, res) => {
    handle(req, res).catch((e) => {
      log.warn({ err: e }, 'admin request failed');
      if (!res.headersSent) send(res, 500, JSON.stringify({ error: 'internal error' }));
      else res.destroy();
    });
  });
  boundAdminServer(server, (ip) => addressAllowed(allow, ip));
  const { host, port } = parseListen(opts.listen);
  const bound = await new Promise<number>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      const a = server.address();
      resolve(typeof a === 'object' && a ? a.port : port);
    });
  }).catch((e) => {
    throw new DsmError(
      ErrorCode.CONFIG,
      `cannot listen on ${opts.listen} (admin.listen): ${messageOf(e)}`,
      undefined,
      {
        cause: e,
      },
    );
  });
  return {
    url: `http://${formatAddress({ host, port: bound })}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/** True when a local interface holds `ip` (IPv4-mapped and case differences aside). */
export function holdsAddress(ip: string): boolean {
  const want = ip.toLowerCase();
  for (const list of Object.values(networkInterfaces()))
    for (const a of list ?? []) if (a.address.toLowerCase() === want) return true;
  return false;
}
