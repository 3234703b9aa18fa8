import { ping } from '@dsm/client';
import { messageOf } from '@dsm/common/errors';
import { Command, parseAddress } from '@dsm/packets';
import { Hono } from 'hono';
import type { GatewayCore } from './core.ts';
import { utf8 } from './encoding.ts';
import { GatewayErrorCode, HttpError, problemResponse, toProblem } from './problem.ts';
import { collectStatus, StatusCache, statusJsonResponse, statusPageResponse } from './status-page.ts';

/**
 * Operator endpoints. The details of readiness (tracker addresses, error texts) and the metrics
 * (routes, byte counts) describe the deployment, so the public listener gives them only to a
 * caller with `admin.token`; the admin listener (`admin.listen`, a private address) gives them to
 * anyone who can reach it.
 */

export interface Readiness {
  ready: boolean;
  trackers: { address: string; ok: boolean; error?: string }[];
  cache: { ok: boolean; error?: string };
}

export async function readiness(core: GatewayCore): Promise<Readiness> {
  const trackers = await Promise.all(
    core.cfg.trackers.map(async (address) => {
      try {
        await withTimeout(ping(core.client.pool, parseAddress(address), Command.TRACKER_REPLY), 2000);
        return { address, ok: true };
      } catch (e) {
        return { address, ok: false, error: messageOf(e) };
      }
    }),
  );
  let cache: Readiness['cache'] = { ok: true };
  try {
    await withTimeout(core.kv.get('gw:readyz'), 2000);
  } catch (e) {
    cache = { ok: false, error: messageOf(e) };
  }
  return { ready: trackers.some((t) => t.ok) && cache.ok, trackers, cache };
}

/** The `/readyz` reply: 200 `{status}` or a 503 problem; the details only when `details`. */
export async function readyResponse(core: GatewayCore, details: boolean): Promise<Response> {
  const r = await readiness(core);
  if (!r.ready) {
    throw new HttpError(503, GatewayErrorCode.NOT_READY, 'no tracker answers, or the cache is down', {
      extra: details ? { trackers: r.trackers, cache: r.cache } : {},
    });
  }
  const body = details ? { status: 'ready', trackers: r.trackers, cache: r.cache } : { status: 'ready' };
  return Response.json(body, { headers: { 'Cache-Control': 'no-store' } });
}

export async function metricsResponse(core: GatewayCore): Promise<Response> {
  if (!core.metrics) throw new HttpError(404, GatewayErrorCode.NO_ROUTE, 'metrics are not enabled');
  const m = await core.metrics.render();
  return new Response(m.body, {
    headers: { 'Content-Type': m.contentType, 'Cache-Control': 'no-store' },
  });
}

/** True when the request carries `Authorization: Bearer <admin.token>` (compared in constant time). */
export function hasAdminToken(core: GatewayCore, authorization: string | undefined): boolean {
  const token = core.cfg.admin.token;
  if (!token || !authorization) return false;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(authorization);
  if (!m) return false;
  const a = utf8(m[1] as string);
  const b = utf8(token);
  let diff = a.length ^ b.length;
  for (let i = 0; i < b.length; i++) diff |= (a[i % (a.length || 1)] ?? 0) ^ (b[i] as number);
  return diff === 0;
}

/**
 * The frame of an admin listener's app (single-process and node:cluster primary alike): problem
 * replies for errors and unknown paths, and `/healthz`.
 */
export function adminAppBase(): Hono {
  const app = new Hono();
  app.onError((err, c) => problemResponse(toProblem(err, c.req.path), c.req.raw.method));
  app.notFound((c) =>
    problemResponse(
      toProblem(new HttpError(404, GatewayErrorCode.NO_ROUTE, `no route for ${c.req.path}`), c.req.path),
      c.req.raw.method,
    ),
  );
  app.get('/healthz', (c) => c.json({ status: 'ok' }, 200, { 'Cache-Control': 'no-store' }));
  return app;
}

/** The admin listener's app: `/healthz`, `/readyz` with details, `/metrics`, `/status` (+ `.json`). */
export function createAdminApp(core: GatewayCore): Hono {
  const app = adminAppBase();
  app.get('/readyz', () => readyResponse(core, true));
  app.get('/metrics', () => metricsResponse(core));
  const status = new StatusCache(() =>
    collectStatus(core, {
      trackers: core.cfg.trackers,
      idServers: core.cfg.admin.idServers,
      nodeAdmins: core.cfg.admin.nodeAdmins,
    }),
  );
  app.get('/status', () => statusPageResponse());
  app.get('/status.json', async () => statusJsonResponse(await status.get()));
  return app;
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}
