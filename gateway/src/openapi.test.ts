import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { DsmClient, encodePublicId } from '@dsm/client';
import { nodeTransport } from '@dsm/client/node';
import { codeForErrno, DsmError, type DsmErrorCode, ErrorCode, GatewayErrorCode } from '@dsm/common/errors';
import { createKvStore } from '@dsm/kv';
import { Errno, parseAddress } from '@dsm/packets';
import { Validator } from '@seriousme/openapi-schema-validator';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp, type GatewayApp } from './app.ts';
import { mintToken, signUrl } from './auth.ts';
import { type GatewayConfigInput, parseGatewayConfig } from './config.ts';
import { GATEWAY_API_VERSION, openApiDocument } from './openapi.ts';
import { badRequest, forbidden, HttpError, notFound, tooLarge, toProblem, unauthorized } from './problem.ts';
import { patternBytes, type Stack, startStack } from './test-support.ts';

// The OpenAPI document is kept true by these checks: it validates, it describes exactly the
// routes createApp registers, its problem table is exactly what the gateway can answer, and real
// replies (of an app with no cluster behind it, and of a gateway in front of a real cluster)
// have a status, headers and body the document declares for their operation.

// biome-ignore lint/suspicious/noExplicitAny: a JSON document walked by key
type Json = any;

const doc: Json = openApiDocument();
const SRC = new URL('.', import.meta.url).pathname;
const METHODS = ['get', 'head', 'post', 'put', 'patch', 'delete', 'options'] as const;

/** Follows a `#/components/…` reference of the document. */
function deref(x: Json): Json {
  if (!x || typeof x !== 'object' || typeof x.$ref !== 'string') return x;
  const parts = (x.$ref as string).replace(/^#\//, '').split('/');
  let at: Json = doc;
  for (const k of parts) {
    at = at?.[k];
    if (at === undefined) throw new Error(`unresolved $ref ${x.$ref}`);
  }
  return deref(at);
}

function refsOf(x: Json, out: string[] = []): string[] {
  if (Array.isArray(x)) for (const v of x) refsOf(v, out);
  else if (x && typeof x === 'object') {
    if (typeof x.$ref === 'string') out.push(x.$ref);
    for (const v of Object.values(x)) refsOf(v, out);
  }
  return out;
}

/** An app with no cluster behind it: nothing here sends a request to a node it needs an answer from. */
function appWith(cfg: GatewayConfigInput = {}): GatewayApp {
  const config = parseGatewayConfig({ trackers: ['127.0.0.1:1'], statCacheMs: 0, ...cfg });
  const client = new DsmClient({
    trackers: config.trackers.map(parseAddress),
    transport: nodeTransport,
    ioTimeoutMs: 2000,
  });
  return createApp({ client, kv: createKvStore('memory:'), config });
}

// --- routes ------------------------------------------------------------------------------------

/**
 * The rule: every route the app registers is described with its method, and every described
 * path + method is registered. Hono's `:id` is OpenAPI's `{id}`. Middlewares (method ALL) are not
 * routes. A path with a trailing slash (`/tus/`) is an alias of the path without it: it is not
 * described separately, but it must register exactly the methods its canonical path does.
 * HEAD: Hono serves HEAD with the GET route, so a described HEAD needs a GET route (HEAD is
 * described where clients use it: file bytes and tus offsets). /healthz, /readyz, /metrics and
 * /openapi.json are routes of the public listener like any other, so they are described too
 * (/metrics answers only with the admin token).
 */
function routeMismatches(routes: readonly { method: string; path: string }[], paths: Json): string[] {
  const registered = new Map<string, Set<string>>();
  for (const r of routes) {
    if (r.method === 'ALL') continue;
    const path = r.path.replace(/:(\w+)/g, '{$1}');
    const set = registered.get(path) ?? new Set<string>();
    registered.set(path, set);
    set.add(r.method.toLowerCase());
  }
  const problems: string[] = [];
  for (const [path, methods] of registered) {
    if (path.length > 1 && path.endsWith('/')) {
      const canonical = registered.get(path.slice(0, -1));
      for (const m of methods)
        if (!canonical?.has(m))
          problems.push(`${m.toUpperCase()} ${path}: an alias of a route that does not exist`);
      continue;
    }
    for (const m of methods) {
      if (!paths[path]?.[m]) problems.push(`${m.toUpperCase()} ${path}: registered, not described`);
    }
  }
  for (const [path, item] of Object.entries<Json>(paths)) {
    for (const m of METHODS) {
      if (!item[m]) continue;
      const needs = m === 'head' ? 'get' : m;
      if (!registered.get(path)?.has(needs))
        problems.push(`${m.toUpperCase()} ${path}: described, not registered`);
    }
  }
  return problems;
}

describe('the OpenAPI document', () => {
  it('validates against the OpenAPI 3.1 schema, and every $ref resolves', async () => {
    const v = new Validator();
    // the validator keeps and rewrites what it is given: a copy
    const r = await v.validate(structuredClone(doc));
    expect(r.errors, JSON.stringify(r.errors, null, 1)).toBeUndefined();
    expect(r.valid).toBe(true);
    expect(v.version).toBe('3.1');
    const refs = refsOf(doc);
    expect(refs.length).toBeGreaterThan(50);
    for (const ref of refs) expect(() => deref({ $ref: ref }), ref).not.toThrow();
  });

  it('is refused by the validator when it is broken (the check above can fail)', async () => {
    const broken = structuredClone(doc);
    delete broken.paths['/files'].post.responses;
    broken.paths['/healthz'].get.parameters = [{ name: 'x', in: 'nowhere' }];
    const r = await new Validator().validate(broken);
    expect(r.valid).toBe(false);
  });

  it("names the gateway package's version, and a server only when publicUrl is set", () => {
    const pkg = JSON.parse(readFileSync(join(SRC, '..', 'package.json'), 'utf8')) as { version: string };
    expect(doc.info.version).toBe(pkg.version);
    expect(GATEWAY_API_VERSION).toBe(pkg.version);
    expect(doc.servers).toBeUndefined();
    expect(openApiDocument({ publicUrl: 'https://media.example/' }).servers).toEqual([
      { url: 'https://media.example' },
    ]);
  });

  it('describes every route createApp registers, and nothing it does not', () => {
    const { app } = appWith();
    const routes = app.routes.filter((r) => r.method !== 'ALL');
    expect(routes.length).toBeGreaterThan(10);
    expect(routeMismatches(app.routes, doc.paths)).toEqual([]);
  });

  it('the route comparison reports an undescribed route, a stale description and a stray alias', () => {
    const { app } = appWith();
    app.get('/files/:id/thumbnail', (c) => c.text('x'));
    app.post('/healthz/', (c) => c.text('x'));
    const paths = structuredClone(doc.paths);
    paths['/gone'] = { get: paths['/healthz'].get };
    expect(routeMismatches(app.routes, paths).sort()).toEqual([
      'GET /files/{id}/thumbnail: registered, not described',
      'GET /gone: described, not registered',
      'POST /healthz/: an alias of a route that does not exist',
    ]);
  });
});

// --- problems ----------------------------------------------------------------------------------

/**
 * Throw sites that pass on a code raised elsewhere (so already counted where it was raised):
 * ipc-kv.ts rebuilds, in a worker, the DsmError the primary's cache raised.
 */
const FORWARDS: Record<string, number> = { 'ipc-kv.ts': 1 };

/** `new HttpError(<status>, <Table>.<NAME>` and `new DsmError(<Table>.<NAME>` in the gateway's code. */
function throwSites(): { httpErrors: HttpError[]; dsmErrors: DsmError[]; unreadable: string[] } {
  const tables: Record<string, Record<string, string>> = { ErrorCode, GatewayErrorCode };
  const httpErrors: HttpError[] = [];
  const dsmErrors: DsmError[] = [];
  const unreadable: string[] = [];
  const code = (file: string, table: string, name: string) => {
    const c = tables[table]?.[name];
    if (!c) unreadable.push(`${file}: ${table}.${name}`);
    return c as DsmErrorCode;
  };
  // openapi.ts builds HttpErrors only to ask toProblem for their type and title: it raises none
  const skip = new Set(['test-support.ts', 'openapi.ts']);
  const files = readdirSync(SRC).filter(
    (f) => f.endsWith('.ts') && !f.endsWith('.test.ts') && !f.endsWith('.d.ts') && !skip.has(f),
  );
  for (const f of files) {
    const text = readFileSync(join(SRC, f), 'utf8');
    const http = [...text.matchAll(/new HttpError\(\s*(\d{3}),\s*(ErrorCode|GatewayErrorCode)\.(\w+)/g)];
    const dsm = [
      ...text.matchAll(/new DsmError\(\s*(ErrorCode|GatewayErrorCode)\.(\w+)/g),
      ...text.matchAll(/\bsuper\(\s*(ErrorCode|GatewayErrorCode)\.(\w+)/g),
    ];
    // a throw site whose status or code is not a literal would escape the table: refuse it
    const allHttp = text.match(/new HttpError\(/g)?.length ?? 0;
    const allDsm = text.match(/new DsmError\(/g)?.length ?? 0;
    const dsmLiteral = [...text.matchAll(/new DsmError\(\s*(ErrorCode|GatewayErrorCode)\.(\w+)/g)].length;
    if (allHttp !== http.length)
      unreadable.push(`${f}: ${allHttp - http.length} HttpError(s) without a literal status and code`);
    if (allDsm - dsmLiteral > (FORWARDS[f] ?? 0))
      unreadable.push(`${f}: ${allDsm - dsmLiteral} DsmError(s) without a literal code`);
    for (const m of http)
      httpErrors.push(new HttpError(Number(m[1]), code(f, m[2] as string, m[3] as string), 'm'));
    for (const m of dsm) dsmErrors.push(new DsmError(code(f, m[1] as string, m[2] as string), 'm'));
  }
  return { httpErrors, dsmErrors, unreadable };
}

/**
 * Every (code, status, type) the gateway can answer: its own throw sites (read from the source),
 * the helpers of problem.ts, every error reply a node can send (by errno, as the client library
 * turns it into a DsmError), every code of the client library without an errno, and an error
 * that is no DsmError at all. All through toProblem, the one mapping app.onError uses.
 */
function answerable(): Map<string, { code: string; status: number; type: string }> {
  const { httpErrors, dsmErrors, unreadable } = throwSites();
  expect(unreadable).toEqual([]);
  expect(httpErrors.length).toBeGreaterThan(15);
  const errors: unknown[] = [
    ...httpErrors,
    ...dsmErrors,
    badRequest('m'),
    unauthorized('m', 'missing'),
    forbidden('m'),
    notFound('m'),
    tooLarge('m'),
    ...Object.values(Errno).map((e) => new DsmError(codeForErrno(e), 'm', e)),
    ...Object.values(ErrorCode).map((c) => new DsmError(c, 'm')),
    new Error('a bug'),
  ];
  const out = new Map<string, { code: string; status: number; type: string }>();
  for (const e of errors) {
    const p = toProblem(e);
    out.set(`${p.body.code} ${p.status}`, { code: p.body.code, status: p.status, type: p.body.type });
  }
  return out;
}

/** What the document says: (code, status, type) of every problem response. */
function described(): Map<string, { code: string; status: number; type: string }> {
  const out = new Map<string, { code: string; status: number; type: string }>();
  for (const [name, resp] of Object.entries<Json>(doc.components.responses)) {
    // Problem<status>: one status and its codes; the rest (OtherProblem, …) add no pair
    if (!/^Problem\d{3}$/.test(name)) continue;
    const own = resp.content['application/problem+json'].schema.allOf[1].properties;
    const status = own.status.const as number;
    expect(name).toBe(`Problem${status}`);
    own.code.enum.forEach((code: string, i: number) => {
      out.set(`${code} ${status}`, { code, status, type: own.type.enum[i] });
    });
  }
  return out;
}

describe('problem types', () => {
  it('every code and status the gateway can answer is described, and nothing else is', () => {
    const can = answerable();
    const said = described();
    expect([...said.keys()].sort()).toEqual([...can.keys()].sort());
    const problem = doc.components.schemas.Problem.properties;
    for (const [key, a] of can) {
      expect(said.get(key)?.type, key).toBe(a.type);
      expect(problem.code.enum, key).toContain(a.code);
      expect(problem.type.enum, key).toContain(a.type);
      expect(problem.status.enum, key).toContain(a.status);
    }
    // the union of the per-status tables is the Problem schema's enum, no more
    expect([...new Set([...can.values()].map((a) => a.code))].sort()).toEqual([...problem.code.enum].sort());
  });
});

// --- live replies ------------------------------------------------------------------------------

/** The described operation of a request path (literal segments win over parameters). */
function operationOf(method: string, urlPath: string): { template: string; op: Json } {
  const path = urlPath.length > 1 ? urlPath.replace(/\/$/, '') : urlPath;
  const templates = Object.keys(doc.paths).sort(
    (a, b) => (a.match(/\{/g)?.length ?? 0) - (b.match(/\{/g)?.length ?? 0),
  );
  for (const t of templates) {
    const re = new RegExp(`^${t.replace(/\{\w+\}/g, '[^/]+')}$`);
    if (re.test(path)) {
      const op = doc.paths[t][method.toLowerCase()];
      if (!op) throw new Error(`${method} ${t} is not described`);
      return { template: t, op };
    }
  }
  throw new Error(`no described path for ${urlPath}`);
}

/** Shallow check of a JSON body against a described object schema (required keys, const, enum). */
function checkJson(body: Json, schema: Json, where: string): void {
  const s = deref(schema);
  if (s.allOf) {
    for (const part of s.allOf) checkJson(body, part, where);
    return;
  }
  for (const k of s.required ?? []) expect(body, `${where}: "${k}" missing`).toHaveProperty(k);
  for (const [k, raw] of Object.entries<Json>(s.properties ?? {})) {
    if (!(k in body)) continue;
    const p = deref(raw);
    if ('const' in p) expect(body[k], `${where}: ${k}`).toBe(p.const);
    if (p.enum) expect(p.enum, `${where}: ${k}`).toContain(body[k]);
  }
}

/**
 * The reply is one the document declares for its operation: the status is listed, every
 * required header is there, the media type is one of the described ones, and a JSON or problem
 * body has what the schema requires (a problem's code, type and status from that status' table).
 */
async function expectDescribed(method: string, url: string, res: Response): Promise<Json> {
  const path = new URL(url, 'http://x').pathname;
  const { template, op } = operationOf(method, path);
  const where = `${method} ${template} → ${res.status}`;
  const resp = deref(op.responses[String(res.status)]);
  expect(resp, `${where}: status not described`).toBeDefined();
  for (const [name, raw] of Object.entries<Json>(resp.headers ?? {})) {
    const h = deref(raw);
    if (h.required) expect(res.headers.get(name), `${where}: header ${name}`).not.toBeNull();
    const v = res.headers.get(name);
    if (v !== null && h.schema?.const !== undefined)
      expect(v, `${where}: ${name}`).toBe(String(h.schema.const));
    if (v !== null && h.schema?.pattern) expect(v, `${where}: ${name}`).toMatch(new RegExp(h.schema.pattern));
  }
  const text = await res.text();
  if (!resp.content) {
    expect(text, `${where}: a body where none is described`).toBe('');
    return undefined;
  }
  if (method === 'HEAD' || text === '') return undefined;
  const type = (res.headers.get('content-type') ?? '').split(';')[0]?.trim() ?? '';
  const media = Object.keys(resp.content);
  expect(media.includes(type) || media.includes('*/*'), `${where}: ${type} not in ${media}`).toBe(true);
  if (type === 'application/json' || type === 'application/problem+json') {
    const body = JSON.parse(text);
    const schema = resp.content[type]?.schema;
    if (schema) checkJson(body, schema, where);
    return body;
  }
  return text;
}

describe('replies of an app with no cluster behind it match the document', () => {
  const id = encodePublicId({ appId: 'tnvideo', userId: 'u1', fileId: 'f1' });
  const SECRET = 'openapi-test-secret-long-enough-0123456789';
  const KEY = 'openapi-signing-key-0123456789';

  async function call(
    app: GatewayApp['app'],
    method: string,
    path: string,
    headers: Record<string, string> = {},
    body?: BodyInit,
  ) {
    const res = await app.request(path, { method, headers, ...(body !== undefined ? { body } : {}) });
    const json = await expectDescribed(method, path, res.clone());
    return { res, json };
  }

  it('health, readiness (no tracker: 503), metrics without the token, an unknown path', async () => {
    const { app } = appWith();
    expect((await call(app, 'GET', '/healthz')).res.status).toBe(200);
    const ready = await call(app, 'GET', '/readyz');
    expect(ready.res.status).toBe(503);
    expect(ready.json.code).toBe(GatewayErrorCode.NOT_READY);
    const metrics = await call(app, 'GET', '/metrics');
    expect(metrics.res.status).toBe(404);
    // no operation: the problem is still one of the described ones
    const nope = await app.request('/nope');
    const body = (await nope.json()) as { code: string; type: string };
    expect(described().get(`${body.code} 404`)?.type).toBe(body.type);
  });

  it('serves itself at /openapi.json, cacheable and revalidated by its ETag', async () => {
    const { app } = appWith();
    const { res, json } = await call(app, 'GET', '/openapi.json');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    expect(res.headers.get('cache-control')).toMatch(/max-age=\d+/);
    expect(json).toEqual(doc);
    const again = await call(app, 'GET', '/openapi.json', {
      'If-None-Match': res.headers.get('etag') as string,
    });
    expect(again.res.status).toBe(304);
  });

  it('tus: discovery, version, headers, media type, and anonymous termination', async () => {
    const { app } = appWith({ maxUploadBytes: 1000 });
    for (const path of ['/tus', '/tus/', `/tus/${id}`]) {
      const r = await call(app, 'OPTIONS', path);
      expect(r.res.status, path).toBe(204);
      expect(r.res.headers.get('tus-max-size')).toBe('1000');
    }
    const v = { 'Tus-Resumable': '1.0.0' };
    expect((await call(app, 'POST', '/tus')).res.status).toBe(412);
    expect((await call(app, 'POST', '/tus/', v)).json.code).toBe(ErrorCode.BAD_INPUT);
    expect((await call(app, 'POST', '/tus', { ...v, 'Upload-Length': '1001' })).res.status).toBe(413);
    expect((await call(app, 'HEAD', `/tus/${id}`)).res.status).toBe(412);
    expect((await call(app, 'PATCH', `/tus/${id}`, v, 'x')).res.status).toBe(415);
    const noOffset = await call(
      app,
      'PATCH',
      `/tus/${id}`,
      { ...v, 'Content-Type': 'application/offset+octet-stream' },
      'x',
    );
    expect(noOffset.res.status).toBe(400);
    expect((await call(app, 'DELETE', `/tus/${id}`, v)).json.code).toBe(GatewayErrorCode.FORBIDDEN);
  });

  it('files: malformed ids, oversized declared bodies, anonymous deletes, an unreachable cluster', async () => {
    const { app } = appWith({ maxUploadBytes: 1000 });
    for (const [m, path] of [
      ['GET', '/files/%2A%2A'],
      ['HEAD', '/files/%2A%2A'],
      ['GET', '/files/%2A%2A/clip.mp4'],
      ['GET', '/files/%2A%2A/meta'],
    ] as const) {
      expect((await call(app, m, path)).res.status, `${m} ${path}`).toBe(400);
    }
    const big = await call(app, 'POST', '/files', { 'Content-Length': '5000' }, patternBytes(5000, 1));
    expect(big.json.code).toBe(ErrorCode.TOO_LARGE);
    expect((await call(app, 'DELETE', `/files/${id}`)).json.code).toBe(GatewayErrorCode.FORBIDDEN);
    const down = await call(app, 'GET', `/files/${id}`);
    expect(down.res.status).toBe(503);
  });

  it('auth: bearer tokens (401 with a challenge, 403 for another owner) and signed URLs', async () => {
    const { app } = appWith({
      auth: { mode: 'jwt', hs256Keys: { k1: SECRET } },
      downloads: { default: 'signed', signingKeys: { s1: KEY }, signingKeyId: 's1' },
    });
    const noToken = await call(app, 'POST', '/files', {}, 'x');
    expect(noToken.res.status).toBe(401);
    expect(noToken.res.headers.get('www-authenticate')).toMatch(/^Bearer/);
    const other = await mintToken({ secret: SECRET, kid: 'k1', app: 'tnvideo', sub: 'someone-else' });
    const del = await call(app, 'DELETE', `/files/${id}`, { Authorization: `Bearer ${other}` });
    expect(del.json.code).toBe(GatewayErrorCode.FORBIDDEN);
    for (const path of [`/files/${id}`, `/files/${id}/meta`, `/files/${id}/a.mp4`]) {
      const r = await call(app, 'GET', path);
      expect([r.res.status, r.json.reason], path).toEqual([401, 'missing']);
    }
    const expired = await signUrl(`/files/${id}`, { kid: 's1', secret: KEY, exp: 1000 });
    expect((await call(app, 'GET', expired)).json.reason).toBe('expired');
  });
});

describe('replies of a gateway in front of a real cluster match the document', () => {
  let s: Stack;
  let url: string;
  const SECRET = 'openapi-test-secret-long-enough-0123456789';

  beforeAll(async () => {
    s = await startStack('sqlite+memory', { maxUploadBytes: 1 << 20 });
    const g = await s.startGateway({
      maxUploadBytes: 1 << 20,
      auth: { mode: 'jwt', hs256Keys: { k1: SECRET } },
    });
    url = g.url;
  }, 60_000);

  afterAll(async () => {
    await s?.stop();
  });

  async function call(method: string, path: string, headers: Record<string, string> = {}, body?: BodyInit) {
    const res = await fetch(`${url}${path}`, { method, headers, ...(body !== undefined ? { body } : {}) });
    const json = await expectDescribed(method, path, res.clone());
    return { res, json };
  }

  it('files: upload, download, range, conditional, meta, unsatisfiable range, delete', async () => {
    const token = await mintToken({ secret: SECRET, kid: 'k1', app: 'tnvideo', sub: 'u1' });
    const auth = { Authorization: `Bearer ${token}` };
    const data = patternBytes(100_000, 3);
    const up = await call('POST', '/files?filename=clip.mp4', { ...auth, 'Content-Type': 'video/mp4' }, data);
    expect(up.res.status).toBe(201);
    const id = up.json.id as string;
    expect((await call('GET', `/files/${id}`)).res.status).toBe(200);
    expect((await call('HEAD', `/files/${id}/clip.mp4`)).res.status).toBe(200);
    const range = await call('GET', `/files/${id}`, { Range: 'bytes=10-19' });
    expect(range.res.status).toBe(206);
    expect(Buffer.from(await range.res.arrayBuffer()).equals(data.subarray(10, 20))).toBe(true);
    const etag = range.res.headers.get('etag') as string;
    expect((await call('GET', `/files/${id}`, { 'If-None-Match': etag })).res.status).toBe(304);
    expect((await call('GET', `/files/${id}`, { 'If-Match': '"0"' })).res.status).toBe(412);
    const unsatisfiable = await call('GET', `/files/${id}`, { Range: 'bytes=200000-' });
    expect(unsatisfiable.res.status).toBe(416);
    expect(unsatisfiable.res.headers.get('content-range')).toBe('bytes */100000');
    expect((await call('GET', `/files/${id}/meta`)).json.size).toBe(100_000);
    const form = new FormData();
    form.set('file', new Blob([data.subarray(0, 5000)]), 'a.png');
    expect((await call('POST', '/files', auth, form)).json.contentType).toBe('image/png');
    expect((await call('DELETE', `/files/${id}`, auth)).res.status).toBe(204);
    expect((await call('GET', `/files/${id}`)).res.status).toBe(404);
  });

  it("a request head past maxHeaderBytes: Node's 431, no body", async () => {
    const big = await call('GET', '/healthz', { 'X-Big': 'a'.repeat(100 * 1024) });
    expect(big.res.status).toBe(431);
  });

  it('tus: create with a first chunk, offset, mismatch, finish, download, terminate', async () => {
    const token = await mintToken({ secret: SECRET, kid: 'k1', app: 'tnvideo', sub: 'u2' });
    const h = { Authorization: `Bearer ${token}`, 'Tus-Resumable': '1.0.0' };
    const octets = { ...h, 'Content-Type': 'application/offset+octet-stream' };
    const data = patternBytes(3000, 4);
    const created = await call(
      'POST',
      '/tus/',
      { ...octets, 'Upload-Length': '3000', 'Upload-Metadata': `filename ${btoa('a.mp4')}` },
      data.subarray(0, 1000),
    );
    expect([created.res.status, created.res.headers.get('upload-offset')]).toEqual([201, '1000']);
    const path = new URL(created.res.headers.get('location') as string).pathname;
    expect((await call('HEAD', path, h)).res.headers.get('upload-offset')).toBe('1000');
    const wrong = await call('PATCH', path, { ...octets, 'Upload-Offset': '5' }, data.subarray(5, 10));
    expect([wrong.res.status, wrong.res.headers.get('upload-offset')]).toEqual([409, '1000']);
    const done = await call('PATCH', path, { ...octets, 'Upload-Offset': '1000' }, data.subarray(1000));
    expect(done.res.headers.get('dsm-file-id')).toBe(path.split('/').pop());
    expect((await call('GET', path)).res.status).toBe(200);
    expect((await call('DELETE', path, h)).res.status).toBe(204);
    expect((await call('HEAD', path, h)).res.status).toBe(404);
  });
});
