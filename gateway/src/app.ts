import { type DsmClient, decodePublicId } from '@dsm/client';
import type { FileIds } from '@dsm/packets';
import { type Context, Hono } from 'hono';
import { cors } from 'hono/cors';
import { routePath } from 'hono/route';
import { hasAdminToken, metricsResponse, readyResponse } from './admin.ts';
import { type FileEntry, GatewayCore, type GatewayDeps } from './core.ts';
import { clientKey, releaseWhenSent } from './edge-limits.ts';
import {
  bufferedBytes,
  countedBody,
  deleteFile,
  downloadEnded,
  type FilePlan,
  fileMeta,
  planFileReply,
  type ReplyHeaders,
  rawBodyType,
  releaseOnStall,
  serveFile,
  slicedReply,
  uploadedHeaders,
  uploadFile,
  uploadReplyAt,
} from './files.ts';
import { FILE_CSP } from './mime.ts';
import { registerOpenApi } from './openapi.ts';
import { GatewayErrorCode, HttpError, problemResponse, toProblem } from './problem.ts';
import { recordProblem } from './status-page.ts';
import { ReleasingSource, resumeDownload } from './streams.ts';
import { TusService } from './tus.ts';
import type { StoredFile } from './uploads.ts';

export type GatewayEnv = {
  Variables: {
    requestId: string;
    /** The request's DsmClient, naming requestId to the nodes (core.ts clientFor). */
    dsmClient: DsmClient;
    /** Headers every reply of the request gets; see files.ts ReplyHeaders. */
    replyHeaders: ReplyHeaders;
    /** The handler built its reply with replyHeaders already. */
    headersSealed: boolean;
    /** The reply's body is in memory (no download slot held while it is sent). */
    bodyBuffered: boolean;
    /** `app/user` of the verified caller, for the access log (set where a handler verified one). */
    principal: string;
  };
};

const REQUEST_ID = /^[\w.-]{1,64}$/;

/** The request's id: the client's X-Request-Id when it is a plain one, else a new one. */
function requestIdFor(header: HeaderOf): string {
  const incoming = header('x-request-id');
  return incoming && REQUEST_ID.test(incoming) ? incoming : crypto.randomUUID();
}

/** Puts the request's reply headers on a reply that was not built with them. */
function applyReplyHeaders(headers: Headers, extra: ReplyHeaders): void {
  for (const k in extra) {
    if (k === 'Vary') headers.append(k, extra[k] as string);
    else headers.set(k, extra[k] as string);
  }
}

export interface GatewayApp {
  app: Hono<GatewayEnv>;
  core: GatewayCore;
  tus: TusService;
  /** The hot request without the app, for the Node entry (see createApp). */
  fastFile: (req: FastRequest) => FastReply | Promise<FastReply | null> | null;
  /** The hot upload (a raw POST /files) without the app, for the Node entry (see createApp). */
  fastUpload: (req: FastUpload) => Promise<FastReply> | null;
}

/** A request header by its lower-case name; several of one name joined by ", ". */
export type HeaderOf = (name: string) => string | undefined;

/** A request as the fast path reads it. */
export interface FastRequest {
  method: string;
  /** The request target: path and query, as sent. */
  target: string;
  header: HeaderOf;
  /** Who the per-client caps count it under (clientKey of the peer, or of the client a trusted proxy named). */
  client: string;
  /**
   * The caller writes a body as it is read (FastReply.stream: the hot lane). Without it, a reply
   * that streams is left to the app (fastFile gives null).
   */
  streams?: boolean;
}

/** An upload as the fast path reads it. */
export interface FastUpload extends FastRequest {
  /** Over TLS (the reply's URL is https). */
  secure: boolean;
  /** The request body, read once. */
  body: () => AsyncIterable<Uint8Array>;
}

/**
 * A reply body read from the storage as the client takes it (a big file's, FastRequest.streams).
 * Its writer reads `source` to the end or closes it, and calls `onEnd` once.
 */
export interface StreamedBody {
  /** The download; a client that stops reading gives its storage connection back (ReleasingSource). */
  source: ReleasingSource;
  /** Exactly this many bytes (the reply's Content-Length); fewer is a failure. */
  length: number;
  /** Bytes sent (metrics). */
  onChunk: (n: number) => void;
  /** Once: at the end, on a failure (the writer then cuts the connection), or `cancelled` when the client went away. */
  onEnd: (error: unknown, cancelled: boolean) => void;
}

/** The fast path's reply: all of it in memory, or its body streamed (`stream`). */
export interface FastReply {
  status: number;
  /** The reply's headers; with `shared`, those of this request only (its X-Request-Id). */
  headers: Record<string, string>;
  /**
   * Headers the same for every request of this reply (a whole small file from memory: its
   * validators, type, length, CORS and content-safety headers), one frozen object per file:
   * written before `headers`. A writer may keep what it made of it (hot-lane.ts).
   */
  shared?: Readonly<Record<string, string>>;
  body: Uint8Array | null;
  /** The body streamed instead (`body` is then null; only to a request that `streams`). */
  stream?: StreamedBody;
}

/** A reply header of `reply` by its exact name, in its own headers or its shared ones. */
export function replyHeader(reply: FastReply, name: string): string | undefined {
  return reply.headers[name] ?? reply.shared?.[name];
}

const FILE_ROUTE = '/files/:id';

/** A reply whose body the caller streams (FastRequest.streams): its plan, for openStream. */
class ToStream {
  constructor(readonly plan: FilePlan) {}
}

/** A Host header the fast path takes (the Node adapter's own test for a host it need not parse). */
const PLAIN_HOST = /^[a-z0-9._-]+(?::(?:[1-5]\d{3,4}|[6-9]\d{3}))?$/;
const DECIMAL = /^\d{1,15}$/;
const MULTIPART = /^multipart\/form-data\b/i;
const utf8 = new TextEncoder();

/** The fast path's reply of a plan: its status and headers, the reply headers added, the body. */
function planReply(plan: FilePlan, extra: ReplyHeaders, body: Uint8Array | null): FastReply {
  const headers = plan.headers;
  for (const k in extra) headers[k] = extra[k] as string;
  return { status: plan.status, headers, body };
}

/** Request headers a browser may send (preflight): ranges, tokens, tus. */
const ALLOW_HEADERS = [
  'Authorization',
  'Content-Type',
  'Range',
  'If-Range',
  'If-None-Match',
  'If-Modified-Since',
  'If-Match',
  'Tus-Resumable',
  'Upload-Length',
  'Upload-Offset',
  'Upload-Metadata',
  'Upload-Defer-Length',
  'Upload-Checksum',
  'X-Requested-With',
  'X-Request-Id',
];

/** Response headers a page's script may read. */
const EXPOSE_HEADERS = [
  'Content-Range',
  'Content-Length',
  'Content-Type',
  'ETag',
  'Accept-Ranges',
  'Last-Modified',
  'Location',
  'Tus-Resumable',
  'Tus-Version',
  'Tus-Extension',
  'Tus-Max-Size',
  'Tus-Checksum-Algorithm',
  'Upload-Offset',
  'Upload-Length',
  'Upload-Metadata',
  'Upload-Defer-Length',
  'Upload-Expires',
  'Dsm-File-Id',
  'X-Request-Id',
];

/**
 * The gateway as a Hono app. Runtime-neutral: the client, the KV store, the config, the
 * logger and the metrics sink are injected by the entry (node.ts for Node, worker.ts for Workers).
 */
/**
 * The client's address (its /64 for IPv6, see clientKey): the socket's peer on Node (not a header a client could set), Cloudflare's
 * `CF-Connecting-IP` on Workers (set by the platform).
 */
function clientAddress(c: Context<GatewayEnv>): string {
  const incoming = (
    c.env as { incoming?: { dsmClientAddress?: string; socket?: { remoteAddress?: string } } } | undefined
  )?.incoming;
  // dsmClientAddress: set by the Node entry (the peer, or the client a trusted proxy forwarded)
  if (incoming) return clientKey(incoming.dsmClientAddress ?? incoming.socket?.remoteAddress ?? 'unknown');
  return clientKey(c.req.raw.headers.get('cf-connecting-ip') ?? 'unknown');
}

/** A public id as a URL path segment can hold it (base64url; anything else goes to the router). */
const ID_SEGMENT = /^[A-Za-z0-9_-]{1,400}$/;

export function createApp(deps: GatewayDeps): GatewayApp {
  const core = new GatewayCore(deps);
  const tus = new TusService(core);
  const app = new Hono<GatewayEnv>();
  const cfg = deps.config;

  // The request id, the metrics and the log line. Headers every reply gets are collected in
  // `replyHeaders` by this and the next middlewares and put on the reply by the handler (file
  // downloads, the hot path: see files.ts) or here after it.
  const anyOrigin = cfg.corsOrigins.includes('*');
  const exposed = EXPOSE_HEADERS.join(',');
  /**
   * The headers every reply of a request gets: its id; on all but OPTIONS what Hono's cors sets
   * on a simple request; under /files and /tus the sandbox (every reply there, bytes, 304s and
   * problems, is sandboxed and never sniffed: whatever an upload contains, a browser may not run
   * it as a page of our origin); under /tus the Tus-Resumable tus asks for.
   */
  const replyHeadersFor = (method: string, path: string, header: HeaderOf): ReplyHeaders => {
    const extra: ReplyHeaders = { 'X-Request-Id': requestIdFor(header) };
    if (method !== 'OPTIONS') {
      if (anyOrigin) extra['Access-Control-Allow-Origin'] = '*';
      else {
        const origin = header('origin');
        if (origin && cfg.corsOrigins.includes(origin)) extra['Access-Control-Allow-Origin'] = origin;
        extra.Vary = 'Origin';
      }
      extra['Access-Control-Expose-Headers'] = exposed;
    } else if (header('access-control-request-method')) return extra; // a preflight
    const tus = path === '/tus' || path.startsWith('/tus/');
    if (tus || path === '/files' || path.startsWith('/files/')) {
      if (tus) extra['Tus-Resumable'] = '1.0.0';
      extra['Content-Security-Policy'] = FILE_CSP;
      extra['X-Content-Type-Options'] = 'nosniff';
    }
    return extra;
  };
  const info = core.infoEnabled;
  /**
   * Metrics and the access log: one line per request at `info` (5xx at `warn`). `bytes` is the
   * reply's Content-Length (what was sent in full unless the client went away: the download
   * path logs that at debug), `ms` the time to the reply's headers.
   */
  const done = (
    method: string,
    route: string,
    path: string,
    requestId: string,
    status: number,
    t0: number,
    client: string,
    bytes: string | null,
    principal: string | undefined,
  ) => {
    const seconds = (performance.now() - t0) / 1000;
    core.metrics?.request(method, route, status, seconds);
    if (status < 500 && !info) return;
    const line = {
      requestId,
      method,
      route,
      path: path.length > 256 ? `${path.slice(0, 256)}…` : path,
      status,
      bytes: bytes === null ? null : Number(bytes),
      ms: Math.round(seconds * 1000),
      client,
      ...(principal ? { principal } : {}),
    };
    if (status >= 500) core.log.warn(line, 'request');
    else core.log.info(line, 'request');
  };
  // The request id, the metrics and the log line. The reply headers are put on the reply by
  // the handler (file downloads, the hot path: see files.ts) or here after it.
  app.use('*', async (c, next) => {
    const t0 = performance.now();
    const method = c.req.raw.method;
    const raw = c.req.raw.headers;
    const extra = replyHeadersFor(method, c.req.path, (name) => raw.get(name) ?? undefined);
    const requestId = extra['X-Request-Id'] as string;
    c.set('requestId', requestId);
    c.set('replyHeaders', extra);
    await next();
    if (!c.get('headersSealed')) applyReplyHeaders(c.res.headers, extra);
    const matched = routePath(c, c.req.routeIndex);
    const route = matched && matched !== '*' && matched !== '/*' ? matched : 'unmatched';
    done(
      method,
      route,
      c.req.path,
      requestId,
      c.res.status,
      t0,
      clientAddress(c),
      c.res.headers.get('content-length'),
      c.get('principal'),
    );
  });

  const corsMiddleware = cors({
    origin: anyOrigin ? '*' : [...cfg.corsOrigins],
    allowMethods: ['GET', 'HEAD', 'POST', 'PATCH', 'DELETE', 'OPTIONS'],
    allowHeaders: ALLOW_HEADERS,
    exposeHeaders: EXPOSE_HEADERS,
    maxAge: 86400,
  });
  app.use('*', async (c, next) => {
    // simple requests: replyHeadersFor has their CORS headers
    if (c.req.raw.method !== 'OPTIONS') return next();
    // Hono's cors answers every OPTIONS as a preflight; a plain OPTIONS (tus discovery) must
    // reach its route.
    if (!c.req.header('access-control-request-method')) {
      await next();
      const origin = c.req.header('origin');
      if (anyOrigin) c.res.headers.set('Access-Control-Allow-Origin', '*');
      else if (origin && cfg.corsOrigins.includes(origin))
        c.res.headers.set('Access-Control-Allow-Origin', origin);
      return;
    }
    return corsMiddleware(c, next);
  });

  // Concurrency caps (config `limits`): uploads gateway-wide, streaming downloads per address.
  const limits = core.edgeLimits;
  app.use('*', async (c, next) => {
    const method = c.req.raw.method;
    const path = c.req.path;
    const upload =
      (method === 'POST' && (path === '/files' || path === '/tus' || path === '/tus/')) ||
      (method === 'PATCH' && path.startsWith('/tus/'));
    if (upload) {
      const release = limits.takeUpload();
      try {
        await next();
      } finally {
        release();
      }
      return;
    }
    const download =
      method === 'GET' &&
      (path.startsWith('/tus/') || (path.startsWith('/files/') && !path.endsWith('/meta')));
    if (!download) return next();
    const release = limits.takeDownload(clientAddress(c));
    try {
      await next();
    } catch (e) {
      release();
      throw e;
    }
    // a body already in memory holds no storage connection while it is sent
    if (c.get('bodyBuffered')) release();
    else c.res = releaseWhenSent(c.res, release);
  });

  /** The problem reply to a failed request, logged by its kind (app.onError and the fast path). */
  const problemOf = (err: unknown, method: string, path: string, requestId: string): Response => {
    const p = toProblem(err, path);
    p.body.requestId = requestId;
    recordProblem(core, p, { requestId, method, path });
    // the original text (storage names, paths, free space) goes to the log only
    const line = {
      code: p.body.code,
      detail: p.body.detail,
      ...(p.internal !== undefined ? { internal: p.internal } : {}),
      requestId,
    };
    // 503/507 are the cluster's state, not a gateway fault; their node text (which the reply no
    // longer carries) is logged at warn so an operator can find it by the requestId
    if (p.body.code === GatewayErrorCode.CLUSTER_AUTH)
      core.log.error(
        line,
        "a node refused the gateway: check cluster.keyId/keyFile and the nodes' allowFrom",
      );
    else if (p.status >= 500 && p.status !== 503 && p.status !== 507)
      core.log.error({ ...line, err }, 'request failed');
    else if (p.status >= 500) core.log.warn(line, 'cluster unavailable');
    else core.log.debug(line, 'refused');
    return problemResponse(p, method);
  };
  app.onError((err, c) => problemOf(err, c.req.raw.method, c.req.path, c.get('requestId')));

  app.notFound((c) => {
    const p = toProblem(
      new HttpError(404, GatewayErrorCode.NO_ROUTE, `no route for ${c.req.raw.method} ${c.req.path}`),
      c.req.path,
    );
    return problemResponse(p, c.req.raw.method);
  });

  // health --------------------------------------------------------------------------------------
  app.get('/healthz', (c) => c.json({ status: 'ok' }, 200, { 'Cache-Control': 'no-store' }));

  // Public readiness says only ready / not ready; details and metrics need `admin.token` here
  // (or the admin listener, admin.ts).
  app.get('/readyz', (c) => readyResponse(core, hasAdminToken(core, c.req.header('authorization'))));

  app.get('/metrics', (c) => {
    if (!hasAdminToken(core, c.req.header('authorization'))) {
      throw new HttpError(404, GatewayErrorCode.NO_ROUTE, 'metrics are served on the admin listener');
    }
    return metricsResponse(core);
  });

  // the API's own description (OpenAPI 3.1, openapi.ts)
  registerOpenApi(app, { publicUrl: cfg.publicUrl });

  // files ---------------------------------------------------------------------------------------
  app.post('/files', (c) => uploadFile(core, c));
  app.get('/files/:id/meta', (c) => fileMeta(core, c, c.req.param('id')));
  app.get('/files/:id', (c) => serveFile(core, c, c.req.param('id')));
  app.get('/files/:id/:filename', (c) =>
    serveFile(core, c, c.req.param('id'), {
      filename: c.req.param('filename'),
      route: '/files/:id/:filename',
    }),
  );
  app.delete('/files/:id', (c) => deleteFile(core, c, c.req.param('id')));

  // tus -----------------------------------------------------------------------------------------
  app.options('/tus', () => tus.options());
  app.options('/tus/', () => tus.options());
  app.options('/tus/:id', () => tus.options());
  app.post('/tus', (c) => tus.create(c));
  app.post('/tus/', (c) => tus.create(c));
  // Hono answers HEAD with the GET route; the raw method tells them apart.
  app.get('/tus/:id', (c) =>
    c.req.raw.method === 'HEAD' ? tus.head(c, c.req.param('id')) : tus.get(c, c.req.param('id')),
  );
  app.patch('/tus/:id', (c) => tus.patch(c, c.req.param('id')));
  app.delete('/tus/:id', (c) => tus.terminate(c, c.req.param('id')));

  /**
   * The fast path of the hot request, a GET or HEAD of `/files/<id>` answered from memory or
   * with one small read (files.ts bufferedBytes), for a runtime that can skip the router, the
   * middleware chain, a context and the Request/Response objects (the Node entry): the reply
   * serveFile gives, the same headers, metrics, log line and problem replies. Null, at once,
   * for a request it does not take: another route, a query (signed URLs), validators or
   * If-Range, an app whose downloads are not public, a client at its download cap (the app
   * answers the 429), the Worker (its downloads go through the edge cache). It gives null too
   * (at once when the stat is cached, else from its promise) for a reply that streams (a big
   * file): the app serves that one.
   */
  const fastFile = (req: FastRequest): FastReply | Promise<FastReply | null> | null => {
    const method = req.method;
    if ((method !== 'GET' && method !== 'HEAD') || core.slicesForAll) return null;
    const target = req.target;
    if (!target.startsWith('/files/')) return null;
    const publicId = target.slice(7);
    if (!ID_SEGMENT.test(publicId)) return null;
    const h = req.header;
    if (
      h('if-none-match') !== undefined ||
      h('if-modified-since') !== undefined ||
      h('if-match') !== undefined ||
      h('if-unmodified-since') !== undefined ||
      h('if-range') !== undefined
    )
      return null;
    const cached = core.cachedEntry(publicId);
    let ids = cached?.ids;
    if (!ids) {
      try {
        ids = decodePublicId(publicId);
      } catch {
        return null; // the app's 400
      }
    }
    if (core.policyFor(ids.appId) !== 'public') return null;
    if (!limits.mayDownload(req.client)) return null; // the app answers the 429
    return answerFile(req, publicId, ids, cached);
  };

  const answerFile = (
    req: FastRequest,
    publicId: string,
    ids: FileIds,
    cached: FileEntry | null,
  ): FastReply | Promise<FastReply | null> | null => {
    const t0 = performance.now();
    const whole = cached && anyOrigin ? wholeFromMemory(req, cached) : null;
    if (whole) {
      answered(req, whole.headers, whole, t0);
      return whole;
    }
    const extra = replyHeadersFor(req.method, req.target, req.header);
    if (!cached) {
      // a slot while the storages are asked (mayDownload above: nothing ran since)
      return answerFetched(req, publicId, ids, limits.takeDownload(req.client), extra, t0);
    }
    const client = core.client.forRequest(extra['X-Request-Id'] as string);
    let reply: FastReply | Promise<FastReply> | ToStream | null;
    try {
      reply = replyOf(req, cached, true, client, extra);
    } catch (e) {
      reply = problemFor(req, extra, e); // the 416 of a range past the end
    }
    if (reply === null) return null; // the app streams it
    core.metrics?.cacheLookup?.('stat', true);
    if (reply instanceof ToStream) {
      const release = limits.takeDownload(req.client);
      return openStream(req, cached, reply.plan, client, extra, release, t0);
    }
    if (!(reply instanceof Promise)) {
      // in memory: no download slot is held (files.ts bufferedBytes)
      answered(req, extra, reply, t0);
      return reply;
    }
    const release = limits.takeDownload(req.client);
    const finish = (r: FastReply) => {
      release();
      answered(req, extra, r, t0);
      return r;
    };
    return reply.then(finish, (e: unknown) => problemFor(req, extra, e).then(finish));
  };

  /** Shared heads of whole files from memory (wholeFromMemory), per cached stat. */
  const wholeHeads = new WeakMap<FileEntry, Readonly<Record<string, string>>>();

  /**
   * The commonest reply without building its headers: a whole file (no Range) whose stat and,
   * for a GET, bytes are in memory, when every origin may read it (its headers are then the
   * same for every request but the request id). Its head is made once per cached stat
   * (planFileReply and replyHeadersFor, as replyOf does for every other reply) and shared.
   */
  const wholeFromMemory = (req: FastRequest, f: FileEntry): FastReply | null => {
    if (req.header('range') !== undefined) return null;
    let body: Uint8Array | null = null;
    if (req.method === 'GET' && f.stat.size > 0) {
      body = core.cachedBytes(f);
      if (!body) return null;
      core.metrics?.cacheLookup?.('file', true);
      core.metrics?.bytesOut(FILE_ROUTE, body.length);
    }
    core.metrics?.cacheLookup?.('stat', true);
    let shared = wholeHeads.get(f);
    if (!shared) {
      const extra = replyHeadersFor('GET', '/files/', () => undefined);
      delete extra['X-Request-Id'];
      shared = Object.freeze(planReply(planFileReply(f, undefined, null, undefined), extra, null).headers);
      wholeHeads.set(f, shared);
    }
    return { status: 200, shared, headers: { 'X-Request-Id': requestIdFor(req.header) }, body };
  };

  /**
   * The reply to `req` for the file `f`, its stat known: at once when no bytes are sent or they
   * are in memory; a promise when they are read (files.ts bufferedBytes: the small-file cache
   * reads and keeps a whole file it takes, a small range of another file is read whole); a
   * ToStream for a reply the caller streams (openStream); null for one the app serves (a caller
   * that does not stream, or coalesced slices). Throws the 416 of a range it cannot satisfy.
   */
  const replyOf = (
    req: FastRequest,
    f: FileEntry,
    usable: boolean,
    client: DsmClient,
    extra: ReplyHeaders,
  ): FastReply | Promise<FastReply> | ToStream | null => {
    const plan = planFileReply(f, undefined, req.header('range') ?? null, undefined);
    if (req.method !== 'GET' || plan.length === 0) return planReply(plan, extra, null);
    const bytes = bufferedBytes(core, client, f, usable, plan.start, plan.length);
    if (bytes === null) return req.streams && !slicedReply(core, plan.length) ? new ToStream(plan) : null;
    const reply = (body: Uint8Array) => {
      core.metrics?.bytesOut(FILE_ROUTE, plan.length);
      return planReply(plan, extra, body);
    };
    return bytes instanceof Uint8Array ? reply(bytes) : bytes.then(reply);
  };

  /** The reply after the stat or the bytes were fetched (or a problem). */
  const answerFetched = async (
    req: FastRequest,
    publicId: string,
    ids: FileIds,
    release: () => void,
    extra: ReplyHeaders,
    t0: number,
  ): Promise<FastReply | null> => {
    const requestId = extra['X-Request-Id'] as string;
    let reply: FastReply;
    let handed = false;
    try {
      let usable = core.cachesUsable();
      if (typeof usable !== 'boolean') usable = await usable;
      const client = core.client.forRequest(requestId);
      const f = await core.file(publicId, ids, usable, client);
      const r = replyOf(req, f, usable, client, extra);
      if (r === null) return null; // the app serves it
      if (r instanceof ToStream) {
        handed = true; // the slot is the stream's now
        return await openStream(req, f, r.plan, client, extra, release, t0);
      }
      reply = r instanceof Promise ? await r : r;
    } catch (e) {
      reply = await problemFor(req, extra, e);
    } finally {
      if (!handed) release();
    }
    answered(req, extra, reply, t0);
    return reply;
  };

  /**
   * The reply of `plan` with its body streamed from the storage (FastReply.stream), for a caller
   * that streams: the download slot `release` is held until the body ends. A storage that cannot
   * start the download gives the app's problem reply. Logged when its head is sent, as the app's.
   */
  const openStream = async (
    req: FastRequest,
    f: FileEntry,
    plan: FilePlan,
    client: DsmClient,
    extra: ReplyHeaders,
    release: () => void,
    t0: number,
  ): Promise<FastReply> => {
    let reply: FastReply;
    try {
      const ids = f.ids;
      // a storage offering another length than asked is a 502 (resumeDownload checks it)
      const first = await resumeDownload(client, ids, plan.start, plan.length);
      const ended = downloadEnded(core, ids);
      reply = planReply(plan, extra, null);
      reply.stream = {
        source: new ReleasingSource(first, releaseOnStall(core, client, ids, plan.start, plan.length)),
        length: plan.length,
        onChunk: (n) => core.metrics?.bytesOut(FILE_ROUTE, n),
        onEnd: (e, cancelled) => {
          release();
          ended(e, cancelled);
        },
      };
    } catch (e) {
      release();
      reply = await problemFor(req, extra, e);
    }
    answered(req, extra, reply, t0);
    return reply;
  };

  /** The fast path's problem reply for `e`: the app's (problemOf), with the reply headers. */
  const problemFor = (req: FastRequest, extra: ReplyHeaders, e: unknown): Promise<FastReply> =>
    problemReply(problemOf(e, req.method, req.target, extra['X-Request-Id'] as string), extra);

  /** Metrics and the access log line of a fast-path reply. */
  const answered = (req: FastRequest, extra: ReplyHeaders, reply: FastReply, t0: number) =>
    done(
      req.method,
      FILE_ROUTE,
      req.target,
      extra['X-Request-Id'] as string,
      reply.status,
      t0,
      req.client,
      replyHeader(reply, 'Content-Length') ?? reply.headers['content-length'] ?? null,
      undefined,
    );

  /**
   * The fast path of the hot upload, a raw POST of `/files` with a Content-Length, for the Node
   * entry (node:http's request, or the hot lane's, which reads the body itself): uploadFile's
   * reply (the same upload, headers, metrics, log line and problem replies) without the router,
   * the middleware chain, a context and the Request/Response objects. Null, at once, for a
   * request it does not take: a query (a file name), multipart, no or a bad Content-Length, a
   * body over maxUploadBytes (the 413), a Host header the Node adapter would parse, the gateway
   * at its upload cap (the app answers those).
   */
  const fastUpload = (req: FastUpload): Promise<FastReply> | null => {
    if (req.method !== 'POST' || req.target !== '/files') return null;
    const h = req.header;
    const length = h('content-length');
    if (length === undefined || !DECIMAL.test(length) || h('transfer-encoding') !== undefined) return null;
    const declared = Number(length);
    if (declared > core.cfg.maxUploadBytes) return null; // the app's 413
    const ctype = h('content-type') ?? '';
    if (MULTIPART.test(ctype)) return null;
    const host = h('host');
    if (host === undefined || !PLAIN_HOST.test(host)) return null;
    let release: () => void;
    try {
      release = limits.takeUpload();
    } catch {
      return null;
    }
    return answerUpload(req, declared, ctype, host, release);
  };

  const answerUpload = async (
    req: FastUpload,
    declared: number,
    ctype: string,
    host: string,
    release: () => void,
  ): Promise<FastReply> => {
    const t0 = performance.now();
    const extra = replyHeadersFor('POST', '/files', req.header);
    const requestId = extra['X-Request-Id'] as string;
    let reply: FastReply;
    try {
      const p = await core.verifier.principal(req.header('authorization'));
      const body = countedBody(req.body());
      const up = core.uploaderWith(core.client.forRequest(requestId));
      let stored: StoredFile;
      try {
        stored = await up.uploadKnown(p, declared, rawBodyType(ctype), body);
      } finally {
        core.metrics?.bytesIn('/files', body.received);
      }
      const json = uploadReplyAt(core, `${req.secure ? 'https' : 'http'}://${host}/files`, stored);
      const bytes = utf8.encode(JSON.stringify(json));
      reply = {
        status: 201,
        headers: {
          'Content-Type': 'application/json',
          'Content-Length': String(bytes.length),
          ...uploadedHeaders(json.url),
          ...extra,
        },
        body: bytes,
      };
    } catch (e) {
      reply = await problemReply(problemOf(e, 'POST', '/files', requestId), extra);
    } finally {
      release();
    }
    done(
      'POST',
      '/files',
      '/files',
      requestId,
      reply.status,
      t0,
      req.client,
      reply.headers['Content-Length'] ?? null,
      undefined,
    );
    return reply;
  };

  return { app, core, tus, fastFile, fastUpload };
}

/** A problem reply (problemOf) as a fast-path reply, with the request's reply headers. */
async function problemReply(res: Response, extra: ReplyHeaders): Promise<FastReply> {
  applyReplyHeaders(res.headers, extra);
  const headers: Record<string, string> = {};
  res.headers.forEach((v, k) => {
    headers[k] = v;
  });
  return { status: res.status, headers, body: res.body ? new Uint8Array(await res.arrayBuffer()) : null };
}
