import { type DsmClient, isRemoteError } from '@dsm/client';
import { ErrorCode, isDsmError } from '@dsm/common/errors';
import { type FileIds, type FileStat, toHex } from '@dsm/packets';
import type { Context } from 'hono';
import { requireOwner, verifySignedUrl } from './auth.ts';
import type { FileEntry, GatewayCore } from './core.ts';
import { evaluatePreconditions, ifRangeAllows, parseRange } from './http-semantics.ts';
import { dispositionFor, typeForName } from './mime.ts';
import { badRequest, GatewayErrorCode, HttpError, tooLarge } from './problem.ts';
import {
  isSelfCounted,
  type ReleaseOnStall,
  requestBody,
  resumeDownload,
  toReadableStream,
} from './streams.ts';
import { cleanContentType, type StoredFile, uploadMultipart } from './uploads.ts';

export const IMMUTABLE = 'public, max-age=31536000, immutable';

export function etagOf(stat: FileStat): string {
  return `"${toHex(stat.sha256)}"`;
}

function contentTypeOf(stat: FileStat, filename?: string): string {
  const recorded =
    stat.contentType && stat.contentType !== 'application/octet-stream' ? stat.contentType : '';
  return recorded || typeForName(filename) || 'application/octet-stream';
}

/** Downloads of an app with policy `signed` need a valid `?exp&kid&sig` for this exact path. */
export async function checkDownloadAllowed(core: GatewayCore, c: Context, ids: FileIds): Promise<void> {
  if (core.policyFor(ids.appId) !== 'signed') return;
  const q = c.req.query();
  await verifySignedUrl(
    new URL(c.req.url).pathname,
    { exp: q.exp, kid: q.kid, sig: q.sig },
    core.cfg.downloads.signingKeys,
    core.cfg.downloads.signingKeyId,
    undefined,
    core.cfg.downloads.maxSignedUrlLifetimeSec,
  );
}

/**
 * Headers every reply of this request gets (request id, CSP, CORS: app.ts puts them here before
 * the handler runs). A handler that builds its reply with them calls `sealHeaders`, so the
 * middlewares need not touch the reply after (which would make the runtime build a Headers
 * object and a second Response on every request).
 */
export type ReplyHeaders = Record<string, string>;

export function replyHeadersOf(c: Context): ReplyHeaders | undefined {
  return c.get('replyHeaders' as never) as ReplyHeaders | undefined;
}

function seal(c: Context, headers: Record<string, string>): void {
  const extra = replyHeadersOf(c);
  if (!extra) return;
  for (const k in extra) headers[k] = extra[k] as string;
  c.set('headersSealed' as never, true as never);
}

/**
 * GET/HEAD of a file: conditional requests, one byte range, and the bytes from the small-file
 * cache, from coalesced slices (big files, replies up to `rangeCache.maxReplyBytes`) or streamed
 * from the storage as the client reads them. (Hono runs GET handlers for HEAD too; the raw
 * method tells.) The download policy is checked before any cache is looked at.
 */
export async function serveFile(
  core: GatewayCore,
  c: Context,
  publicId: string,
  opts: { filename?: string; route: string } = { route: '/files/:id' },
): Promise<Response> {
  const ids = core.parseId(publicId);
  await checkDownloadAllowed(core, c, ids);
  let usable = core.cachesUsable();
  if (typeof usable !== 'boolean') usable = await usable;
  const f = await core.file(publicId, ids, usable, core.clientFor(c));
  const etag = f.etag;
  const mtimeSec = f.mtimeSec;
  const raw = c.req.raw.headers;
  const ifMatch = raw.get('if-match') ?? undefined;
  const ifUnmodifiedSince = raw.get('if-unmodified-since') ?? undefined;
  const ifNoneMatch = raw.get('if-none-match') ?? undefined;
  const ifModifiedSince = raw.get('if-modified-since') ?? undefined;
  const pre =
    ifMatch === undefined &&
    ifUnmodifiedSince === undefined &&
    ifNoneMatch === undefined &&
    ifModifiedSince === undefined
      ? 'ok'
      : evaluatePreconditions({ ifMatch, ifUnmodifiedSince, ifNoneMatch, ifModifiedSince }, etag, mtimeSec);
  if (pre === 'failed') {
    throw new HttpError(
      412,
      GatewayErrorCode.PRECONDITION_FAILED,
      'If-Match / If-Unmodified-Since did not hold',
      {
        headers: { ETag: etag },
      },
    );
  }
  if (pre === 'not-modified') {
    const headers = validatorHeaders(f);
    seal(c, headers);
    return new Response(null, { status: 304, headers });
  }

  const { status, headers, start, length } = planFileReply(
    f,
    opts.filename,
    raw.get('range'),
    raw.get('if-range') ?? undefined,
  );
  const size = f.stat.size;
  if (c.req.raw.method === 'HEAD' || length === 0) {
    seal(c, headers);
    return new Response(null, { status, headers });
  }
  const route = opts.route;

  // from memory: the small-file cache, or a small reply read whole
  const buffered = bufferedBytes(core, core.clientFor(c), f, usable, start, length);
  if (buffered) {
    const bytes = buffered instanceof Uint8Array ? buffered : await buffered;
    core.metrics?.bytesOut(route, length);
    bufferedBody(c);
    seal(c, headers);
    return new Response(bytes, { status, headers });
  }

  // a big file's reply of modest length: coalesced slices, shared with concurrent requests (the
  // Worker's edge cache: every reply)
  const slices = core.slices;
  if (slices && slicedReply(core, length)) {
    const body = slices.stream({ ...f, size }, start, length, {
      source: core.sliceSource,
      keep: usable,
      stallMs: core.cfg.timeouts.upstreamReleaseMs,
      onChunk: (n) => core.metrics?.bytesOut(route, n),
      onEnd: downloadEnded(core, ids),
    });
    seal(c, headers);
    return new Response(body, { status, headers });
  }

  const client = core.clientFor(c);
  // a storage offering another length than asked is a 502 (resumeDownload checks it)
  const source = await resumeDownload(client, ids, start, length);
  const body = toReadableStream(
    source,
    (n) => core.metrics?.bytesOut(route, n),
    downloadEnded(core, ids),
    releaseOnStall(core, client, ids, start, length),
  );
  seal(c, headers);
  return new Response(body, { status, headers });
}

/**
 * Whether a reply of `length` bytes of a big file is served from coalesced slices (shared with
 * concurrent requests; the Worker's edge cache: every reply) rather than streamed on its own.
 */
export function slicedReply(core: GatewayCore, length: number): boolean {
  return (
    core.slices !== null &&
    (core.slicesForAll || (length > SMALL_BODY_BYTES && length <= core.cfg.rangeCache.maxReplyBytes))
  );
}

/** A streamed download's end, logged: a client gone (debug), a storage failing midway (warn). */
export function downloadEnded(core: GatewayCore, ids: FileIds): (e: unknown, cancelled: boolean) => void {
  return (e, cancelled) => {
    if (cancelled) {
      if (core.debugEnabled) core.log.debug({ fileId: ids.fileId }, 'client went away during a download');
    } else if (e) core.log.warn({ err: e, fileId: ids.fileId }, 'download stream failed midway');
  };
}

/**
 * A client that stops reading gives its storage connection back (timeouts.upstreamReleaseMs):
 * the rest of the `length` bytes from `start` is asked again when it reads on.
 */
export function releaseOnStall(
  core: GatewayCore,
  client: DsmClient,
  ids: FileIds,
  start: number,
  length: number,
): ReleaseOnStall {
  return {
    afterMs: core.cfg.timeouts.upstreamReleaseMs,
    reopen: (done) => resumeDownload(client, ids, start + done, length - done),
  };
}

const NO_RANGE = { kind: 'none' as const };

/** The headers of every reply about a file's bytes (200, 206, 304). */
function validatorHeaders(f: FileEntry): Record<string, string> {
  return {
    ETag: f.etag,
    'Last-Modified': f.lastModified,
    'Cache-Control': IMMUTABLE,
    'Accept-Ranges': 'bytes',
  };
}

/** What a GET/HEAD of a file answers once its validators held: status, headers, byte span. */
export interface FilePlan {
  status: 200 | 206;
  headers: Record<string, string>;
  start: number;
  length: number;
}

/**
 * The reply to a GET/HEAD of `f` whose preconditions held (or were absent): one byte range when
 * `range` asks for a satisfiable one (and `ifRange` allows it), else the whole file; the 416 is
 * thrown. The type is the recorded one (or the name's), the disposition inline only for the media
 * allow-list (CSP sandbox and nosniff: app.ts, on every file reply).
 */
export function planFileReply(
  f: FileEntry,
  filename: string | undefined,
  rangeHeader: string | null,
  ifRange: string | undefined,
): FilePlan {
  const size = f.stat.size;
  const range =
    rangeHeader !== null && ifRangeAllows(ifRange, f.etag, f.mtimeSec)
      ? parseRange(rangeHeader, size)
      : NO_RANGE;
  if (range.kind === 'unsatisfiable') {
    throw new HttpError(416, ErrorCode.RANGE, `range "${rangeHeader}" is not satisfiable for ${size} bytes`, {
      headers: { 'Content-Range': `bytes */${size}`, 'Accept-Ranges': 'bytes', ETag: f.etag },
    });
  }
  const headers = validatorHeaders(f);
  const type = contentTypeOf(f.stat, filename);
  headers['Content-Type'] = type;
  const disposition = dispositionFor(type, filename);
  if (disposition) headers['Content-Disposition'] = disposition;
  if (range.kind === 'range') {
    const length = range.end - range.start + 1;
    headers['Content-Range'] = `bytes ${range.start}-${range.end}/${size}`;
    headers['Content-Length'] = String(length);
    return { status: 206, headers, start: range.start, length };
  }
  headers['Content-Length'] = String(size);
  return { status: 200, headers, start: 0, length: size };
}

/** Replies up to this many bytes are read whole and sent in one piece (see serveFile). */
export const SMALL_BODY_BYTES = 64 * 1024;

/**
 * The bytes of a reply sent from memory, or null for one that streams: from the small-file cache
 * (the whole file read once, then kept), or, for a reply of at most SMALL_BODY_BYTES, read whole
 * from the storage: one write instead of a stream, and a storage failure midway is still a clean
 * 502 problem rather than a cut-off 200. (The Worker reads everything through its edge cache.)
 */
export function bufferedBytes(
  core: GatewayCore,
  client: DsmClient,
  f: FileEntry,
  usable: boolean,
  start: number,
  length: number,
): Uint8Array<ArrayBuffer> | Promise<Uint8Array<ArrayBuffer>> | null {
  const cached = core.smallFile(f, usable);
  if (cached) {
    const whole = length === f.stat.size;
    if (cached instanceof Uint8Array) return whole ? cached : cached.subarray(start, start + length);
    return cached.then(
      (bytes) => (whole ? bytes : bytes.subarray(start, start + length)),
      (e: unknown) => {
        core.log.warn({ err: e, fileId: f.ids.fileId }, 'download failed');
        throw new HttpError(502, ErrorCode.PROTOCOL, 'the storage failed while sending the file');
      },
    );
  }
  if (length > SMALL_BODY_BYTES || core.slicesForAll) return null;
  return readSmallRange(core, client, f, start, length);
}

/** `length` (≤ SMALL_BODY_BYTES) bytes of `f` from `start`, read whole; a storage failure is a 502. */
function readSmallRange(
  core: GatewayCore,
  client: DsmClient,
  f: FileEntry,
  start: number,
  length: number,
): Promise<Uint8Array<ArrayBuffer>> {
  return (client.downloadBytes(f.ids, start, length) as Promise<Uint8Array<ArrayBuffer>>).catch(
    (e: unknown) => {
      throw smallReadFailure(core, f, e);
    },
  );
}

/**
 * What a failed read of a small range answers: a reply that broke off or broke the frame rules
 * is a 502 (logged); the storage's own answers (and every other failure) pass as they are.
 */
function smallReadFailure(core: GatewayCore, f: FileEntry, e: unknown): unknown {
  if (!isDsmError(e, ErrorCode.PROTOCOL) || isRemoteError(e)) return e;
  core.log.warn({ err: e, fileId: f.ids.fileId }, 'download failed');
  return new HttpError(502, ErrorCode.PROTOCOL, 'the storage failed while sending the file');
}

/** The reply's body is in memory: the download slot (limits.downloadsPerClient) is not held. */
function bufferedBody(c: Context): void {
  c.set('bodyBuffered' as never, true as never);
}

export async function fileMeta(core: GatewayCore, c: Context, publicId: string): Promise<Response> {
  const ids = core.parseId(publicId);
  await checkDownloadAllowed(core, c, ids);
  const stat = await core.stat(publicId, ids, core.clientFor(c));
  const base = core.baseUrl(c.req.url);
  return c.json(
    {
      id: publicId,
      app: ids.appId,
      user: ids.userId,
      fileId: ids.fileId,
      size: stat.size,
      sha256: toHex(stat.sha256),
      contentType: contentTypeOf(stat),
      etag: etagOf(stat),
      lastModified: new Date(stat.mtimeMs).toISOString(),
      url: `${base}/files/${publicId}`,
      downloadPolicy: core.policyFor(ids.appId),
    },
    200,
    { 'Cache-Control': 'no-cache' },
  );
}

export function uploadReply(core: GatewayCore, c: Context, f: StoredFile, filename?: string) {
  return uploadReplyAt(core, c.req.url, f, filename);
}

/** uploadReply for a request to `requestUrl` (the Node fast path has no context). */
export function uploadReplyAt(core: GatewayCore, requestUrl: string, f: StoredFile, filename?: string) {
  const base = core.baseUrl(requestUrl);
  const url = `${base}/files/${f.publicId}`;
  return {
    id: f.publicId,
    size: f.stat.size,
    sha256: toHex(f.stat.sha256),
    contentType: contentTypeOf(f.stat, filename),
    url,
    ...(filename ? { namedUrl: `${url}/${encodeURIComponent(filename)}` } : {}),
    lastModified: new Date(f.stat.mtimeMs).toISOString(),
    downloadPolicy: core.policyFor(f.ids.appId),
  };
}

/** Multipart bodies carry some bytes around the file; allow this much over the file limit. */
const MULTIPART_OVERHEAD = 1024 * 1024;

/**
 * POST /files: a raw body (streamed as one upload when Content-Length is known, in blocks
 * otherwise) or multipart/form-data (the first part with a filename, or named "file").
 */
export async function uploadFile(core: GatewayCore, c: Context): Promise<Response> {
  const p = await core.verifier.principal(c.req.header('authorization'));
  const max = core.cfg.maxUploadBytes;
  const ctype = c.req.header('content-type') ?? '';
  const lenHeader = c.req.header('content-length');
  if (lenHeader !== undefined && !/^\d{1,15}$/.test(lenHeader)) throw badRequest('bad Content-Length');
  const declared = lenHeader === undefined ? undefined : Number(lenHeader);
  const isMultipart = /^multipart\/form-data\b/i.test(ctype);
  if (declared !== undefined && declared > max + (isMultipart ? MULTIPART_OVERHEAD : 0)) {
    throw tooLarge(`the body (${declared} bytes) exceeds the limit of ${max} bytes`);
  }
  const body = countedBody(requestBody(c.env, () => c.req.raw.body));
  let stored: StoredFile;
  let filename = c.req.query('filename') || undefined;
  const up = core.uploaderFor(c);
  try {
    if (isMultipart) {
      const l = core.cfg.limits;
      ({ stored, filename } = await uploadMultipart(
        up,
        p,
        body,
        ctype,
        max,
        {
          maxParts: l.multipartParts,
          maxPartHeaderBytes: l.multipartPartHeaderBytes,
          maxFields: l.multipartFields,
          maxFieldBytes: l.multipartFieldBytes,
        },
        filename,
      ));
    } else {
      const type = rawBodyType(ctype, filename);
      stored =
        declared !== undefined
          ? await up.uploadKnown(p, declared, type, body)
          : await up.uploadUnknown(p, type, body, max);
    }
  } finally {
    core.metrics?.bytesIn('/files', body.received);
  }
  const reply = uploadReply(core, c, stored, filename);
  return c.json(reply, 201, uploadedHeaders(reply.url));
}

/** The stored type of a raw (not multipart) upload's body. */
export const rawBodyType = (ctype: string, filename?: string): string =>
  cleanContentType(ctype) || typeForName(filename) || '';

/** The headers of a 201 upload reply but its content type (uploadFile and the fast path). */
export const uploadedHeaders = (url: string) => ({ Location: url, 'Cache-Control': 'no-store' });

/** A request body that counts what passed (for dsm_gateway_bytes_in_total). */
export interface CountedBody extends AsyncIterable<Uint8Array> {
  readonly received: number;
}

export function countedBody(src: AsyncIterable<Uint8Array>): CountedBody {
  // a body that counts itself (the hot lane's LaneBody)
  if (isSelfCounted(src)) return src;
  const body = {
    received: 0,
    async *[Symbol.asyncIterator]() {
      for await (const b of src) {
        body.received += b.length;
        yield b;
      }
    },
  };
  return body;
}

export async function deleteFile(core: GatewayCore, c: Context, publicId: string): Promise<Response> {
  const p = await core.verifier.principal(c.req.header('authorization'), 'delete');
  const ids = core.parseId(publicId);
  requireOwner(p, ids, core.cfg.auth.mode);
  await core.clientFor(c).delete(ids);
  // every gateway process drops what it cached of the file (the delete journal)
  await core
    .deleted(publicId)
    .catch((e: unknown) =>
      core.log.error({ err: e, publicId }, 'a delete could not be written to the delete journal'),
    );
  return new Response(null, { status: 204 });
}
