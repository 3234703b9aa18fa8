import { type DsmErrorCode, ErrorCode, GatewayErrorCode } from '@dsm/common/errors';
import type { Env, Hono } from 'hono';
import { weakMatch } from './http-semantics.ts';
import { FILE_CSP } from './mime.ts';
import { HttpError, toProblem } from './problem.ts';
import { TUS_CHECKSUMS, TUS_EXTENSIONS, TUS_VERSION } from './tus.ts';

/**
 * The OpenAPI 3.1 description of the gateway's public API, as plain data (no framework, no
 * `node:` import: the Worker serves it too). `openapi.test.ts` keeps it true: every route of
 * createApp is described and every description has its route, the document validates against
 * the OpenAPI 3.1 schema, every (code, status) the gateway can answer is in the problem table
 * below and nothing else is, and live replies of the app match what is described.
 */

export const GATEWAY_API_VERSION = '0.1.0';

/** What problem.ts answers for a code and status: its `type` URN and `title` are taken from there. */
const answer = (status: number, code: DsmErrorCode) => toProblem(new HttpError(status, code, '')).body;

/**
 * Every code a reply can carry, with the statuses it comes with. The gateway's own codes come
 * from its throw sites; the cluster's and the client library's from problem.ts's mapping (by
 * code, and by errno for remote errors). `DSM_ERR_LENGTH_REQUIRED` is declared in @dsm/common
 * but never raised, so it is not here.
 */
export const PROBLEM_CODES = {
  [ErrorCode.BAD_INPUT]: {
    status: [400],
    when: 'a malformed header, file id, Upload-Metadata, form or body',
  },
  [GatewayErrorCode.BODY_INCOMPLETE]: {
    status: [400],
    when: 'the request body ended before its declared length',
  },
  [ErrorCode.CONFIG]: {
    status: [400, 500],
    when: '500: the Worker is misconfigured (the detail names the key); 400: the client library refused an argument',
  },
  [ErrorCode.UNAUTHORIZED]: {
    status: [401],
    when: 'a bearer token or signed URL is missing, expired or invalid (`reason`: missing | expired | invalid)',
  },
  [GatewayErrorCode.FORBIDDEN]: {
    status: [403],
    when: 'the token is valid but not the owner of the file or upload; or a delete without auth.mode jwt',
  },
  [ErrorCode.UNKNOWN_APP]: { status: [403], when: 'the trackers do not know the app id' },
  [ErrorCode.NOT_FOUND]: { status: [404], when: 'no such file or upload' },
  [GatewayErrorCode.NO_ROUTE]: {
    status: [404],
    when: 'no such endpoint (also /metrics without the admin token)',
  },
  [ErrorCode.OFFSET_MISMATCH]: {
    status: [409],
    when: "tus: Upload-Offset differs from the storage's offset (the reply carries the real one)",
  },
  [ErrorCode.EXISTS]: { status: [409], when: 'the storage already has a file of this id' },
  [GatewayErrorCode.GONE]: { status: [410], when: 'tus: the upload expired' },
  [GatewayErrorCode.PRECONDITION_FAILED]: {
    status: [412],
    when: 'If-Match / If-Unmodified-Since did not hold',
  },
  [GatewayErrorCode.TUS_VERSION]: { status: [412], when: `tus: Tus-Resumable missing or not ${TUS_VERSION}` },
  [ErrorCode.TOO_LARGE]: {
    status: [413],
    when: 'over maxUploadBytes, Upload-Length, the checksummed-chunk limit or a multipart cap',
  },
  [GatewayErrorCode.UNSUPPORTED_MEDIA_TYPE]: {
    status: [415],
    when: 'tus: PATCH without Content-Type application/offset+octet-stream',
  },
  [ErrorCode.RANGE]: { status: [416], when: 'the Range is malformed or not satisfiable' },
  [GatewayErrorCode.LOCKED]: { status: [423], when: 'tus: another request is writing to the upload' },
  [GatewayErrorCode.TOO_MANY_REQUESTS]: {
    status: [429],
    when: 'limits.concurrentUploads, downloadsPerClient or connectionsPerClient reached',
  },
  [GatewayErrorCode.CHECKSUM_MISMATCH]: {
    status: [460],
    when: 'tus: Upload-Checksum does not match the body',
  },
  [GatewayErrorCode.INTERNAL]: { status: [500], when: 'a bug (the log has it under the requestId)' },
  [ErrorCode.PROTOCOL]: { status: [502], when: 'a storage answered in a way the gateway did not expect' },
  [ErrorCode.REMOTE]: { status: [502], when: 'a node answered an error the gateway has no status for' },
  [ErrorCode.NO_STORAGE]: { status: [503], when: 'no storage of the group can take the request' },
  [ErrorCode.DB_UNAVAILABLE]: { status: [503], when: "a node's database is unavailable" },
  [ErrorCode.CACHE_UNAVAILABLE]: { status: [503], when: 'the cache (tus state) is unavailable' },
  [ErrorCode.CONNECT]: { status: [503], when: 'a node cannot be reached' },
  [ErrorCode.SOCKET]: { status: [503], when: 'a connection to a node broke' },
  [ErrorCode.TIMEOUT]: { status: [503], when: 'a node did not answer in time' },
  [ErrorCode.POOL_FULL]: {
    status: [503],
    when: 'every connection to the storage is busy and the queue is full',
  },
  [ErrorCode.IO]: { status: [503], when: 'a storage failed to read or write' },
  [ErrorCode.ID_UNAVAILABLE]: { status: [503], when: 'no id server can give file ids' },
  [ErrorCode.NOT_JOINED]: { status: [503], when: 'the storage has not joined its tracker yet' },
  [GatewayErrorCode.NOT_READY]: { status: [503], when: '/readyz: no tracker answers, or the cache is down' },
  [GatewayErrorCode.CLUSTER_AUTH]: {
    status: [503],
    when: 'a node refused the gateway itself (cluster key, allowFrom): an operator problem',
  },
  [ErrorCode.NO_SPACE]: { status: [507], when: 'the storage group has no space for the file' },
} as const satisfies Partial<Record<DsmErrorCode, { status: readonly number[]; when: string }>>;

type ProblemCode = keyof typeof PROBLEM_CODES;
const CODES = Object.keys(PROBLEM_CODES) as ProblemCode[];

/** The codes a status comes with. */
function codesOf(status: number): ProblemCode[] {
  return CODES.filter((c) => (PROBLEM_CODES[c].status as readonly number[]).includes(status));
}

// --- small builders ----------------------------------------------------------------------------

type Obj = Record<string, unknown>;
const ref = (kind: string, name: string) => ({ $ref: `#/components/${kind}/${name}` });
const str = (description: string, extra: Obj = {}) => ({ type: 'string', description, ...extra });
const int = (description: string, extra: Obj = {}) => ({
  type: 'integer',
  minimum: 0,
  description,
  ...extra,
});

/** Response headers by component name; `true` = always sent. */
type HeaderSet = Record<string, boolean>;

function headers(set: HeaderSet): Obj {
  const out: Obj = {};
  for (const [name, required] of Object.entries(set)) {
    const h = HEADERS[name];
    if (!h) throw new Error(`openapi: no header component ${name}`);
    // a Reference Object takes no `required` beside it: required headers have their own component
    out[h.name] = ref('headers', required ? `${name}Required` : name);
  }
  return out;
}

const HEADERS: Record<string, { name: string; schema: Obj; description: string }> = {
  XRequestId: {
    name: 'X-Request-Id',
    schema: { type: 'string', pattern: '^[\\w.-]{1,64}$' },
    description:
      "The request's id (an incoming `X-Request-Id` of `[\\w.-]{1,64}` is kept); the log lines carry it.",
  },
  ETag: {
    name: 'ETag',
    schema: { type: 'string', pattern: '^"[0-9a-f]{64}"$' },
    description: "Strong entity tag: the file's SHA-256 in hex, quoted.",
  },
  LastModified: {
    name: 'Last-Modified',
    schema: { type: 'string' },
    description: 'The commit time (HTTP-date).',
  },
  CacheControl: { name: 'Cache-Control', schema: { type: 'string' }, description: 'Caching of this reply.' },
  AcceptRanges: { name: 'Accept-Ranges', schema: { const: 'bytes' }, description: 'Byte ranges are served.' },
  ContentRange: {
    name: 'Content-Range',
    schema: { type: 'string', pattern: '^bytes (\\d+-\\d+|\\*)/\\d+$' },
    description: '`bytes first-last/size` on a 206; `bytes */size` on a 416.',
  },
  ContentLength: {
    name: 'Content-Length',
    schema: { type: 'integer', minimum: 0 },
    description: 'Bytes of the body.',
  },
  ContentDisposition: {
    name: 'Content-Disposition',
    schema: { type: 'string' },
    description:
      '`attachment` for every type not on the inline allow-list (video, audio, some images, HLS/DASH playlists, text/plain); `inline; filename*=…` for an allowed type asked for by name; absent for an allowed type without a name.',
  },
  ContentSecurityPolicy: {
    name: 'Content-Security-Policy',
    schema: { const: FILE_CSP },
    description:
      'Every reply under /files and /tus is sandboxed: an upload never runs as a page of this origin.',
  },
  XContentTypeOptions: {
    name: 'X-Content-Type-Options',
    schema: { const: 'nosniff' },
    description: 'Never sniffed.',
  },
  Location: {
    name: 'Location',
    schema: { type: 'string', format: 'uri' },
    description: 'The URL of what was created.',
  },
  RetryAfter: {
    name: 'Retry-After',
    schema: { type: 'integer' },
    description: 'Seconds to wait before retrying.',
  },
  WWWAuthenticate: {
    name: 'WWW-Authenticate',
    schema: { type: 'string' },
    description: '`Bearer realm="dsm"` when a bearer token was refused (not on signed-URL refusals).',
  },
  TusResumable: {
    name: 'Tus-Resumable',
    schema: { const: TUS_VERSION },
    description: 'The tus version spoken.',
  },
  TusVersion: { name: 'Tus-Version', schema: { const: TUS_VERSION }, description: 'tus versions supported.' },
  TusExtension: {
    name: 'Tus-Extension',
    schema: { const: TUS_EXTENSIONS },
    description: 'tus extensions supported.',
  },
  TusMaxSize: { name: 'Tus-Max-Size', schema: { type: 'integer' }, description: 'maxUploadBytes.' },
  TusChecksumAlgorithm: {
    name: 'Tus-Checksum-Algorithm',
    schema: { const: TUS_CHECKSUMS },
    description: 'Upload-Checksum algorithms.',
  },
  UploadOffset: {
    name: 'Upload-Offset',
    schema: { type: 'integer', minimum: 0 },
    description: "Bytes the storage holds of the upload (the storage's partial file is the truth).",
  },
  UploadLength: {
    name: 'Upload-Length',
    schema: { type: 'integer', minimum: 0 },
    description: 'Total length.',
  },
  UploadDeferLength: {
    name: 'Upload-Defer-Length',
    schema: { const: '1' },
    description: 'The length is not known yet (instead of Upload-Length).',
  },
  UploadMetadata: {
    name: 'Upload-Metadata',
    schema: { type: 'string' },
    description: 'As given at creation.',
  },
  UploadExpires: {
    name: 'Upload-Expires',
    schema: { type: 'string' },
    description: 'When an unfinished upload is deleted (HTTP-date; tusExpiryMs after the last write).',
  },
  DsmFileId: {
    name: 'Dsm-File-Id',
    schema: { type: 'string' },
    description:
      "The file's public id, once the last byte is in and the upload is committed (it equals the upload id).",
  },
};

function headerComponents(): Obj {
  const out: Obj = {};
  for (const [key, h] of Object.entries(HEADERS)) {
    const base = { description: h.description, schema: h.schema };
    out[key] = base;
    out[`${key}Required`] = { ...base, required: true };
  }
  return out;
}

// --- parameters --------------------------------------------------------------------------------

const header = (name: string, description: string, schema: Obj, required = false) => ({
  name,
  in: 'header',
  required,
  description,
  schema,
});

const PARAMETERS: Obj = {
  FileId: {
    name: 'id',
    in: 'path',
    required: true,
    description:
      'The public id `POST /files` or tus returns: base64url of app (1–15 bytes), user (≤ 255) and file id (1–127); malformed is 400, well-formed but unknown is 404.',
    schema: { type: 'string', pattern: '^[A-Za-z0-9_-]+$' },
  },
  UploadId: {
    name: 'id',
    in: 'path',
    required: true,
    description: 'The tus upload id (the `Location` of the creation): the public id the file will have.',
    schema: { type: 'string', pattern: '^[A-Za-z0-9_-]+$' },
  },
  FileName: {
    name: 'filename',
    in: 'path',
    required: true,
    description:
      'Any name: gives the Content-Type by extension when none was recorded, and `Content-Disposition` a filename. (`meta` is the metadata route.)',
    schema: { type: 'string' },
  },
  SignedExp: {
    name: 'exp',
    in: 'query',
    description: 'Signed URL: expiry, Unix seconds (at most downloads.maxSignedUrlLifetimeSec ahead).',
    schema: { type: 'string', pattern: '^\\d{1,12}$' },
  },
  SignedKid: {
    name: 'kid',
    in: 'query',
    description: 'Signed URL: the signing key id (default downloads.signingKeyId).',
    schema: { type: 'string' },
  },
  SignedSig: {
    name: 'sig',
    in: 'query',
    description: 'Signed URL: base64url HMAC-SHA256(key, `<path as requested>\\n<exp>`).',
    schema: { type: 'string' },
  },
  UploadFilename: {
    name: 'filename',
    in: 'query',
    description:
      'A name for the file: its extension gives the type when the body has none; the reply gets a `namedUrl`.',
    schema: { type: 'string' },
  },
  Range: header(
    'Range',
    'One byte range (`bytes=first-last`, `bytes=first-`, `bytes=-suffix`); of several, the first satisfiable one is served.',
    {
      type: 'string',
    },
  ),
  IfRange: header(
    'If-Range',
    'Serve the Range only if this ETag (strong) or date still matches; else the whole file.',
    {
      type: 'string',
    },
  ),
  IfMatch: header('If-Match', 'Strong comparison; no match: 412.', { type: 'string' }),
  IfNoneMatch: header('If-None-Match', 'Weak comparison; a match: 304.', { type: 'string' }),
  IfModifiedSince: header('If-Modified-Since', 'Not modified since: 304 (ignored with If-None-Match).', {
    type: 'string',
  }),
  IfUnmodifiedSince: header('If-Unmodified-Since', 'Modified since: 412 (ignored with If-Match).', {
    type: 'string',
  }),
  TusResumable: header('Tus-Resumable', `Must be ${TUS_VERSION} (else 412).`, { const: TUS_VERSION }, true),
  UploadLength: header('Upload-Length', 'Total length of the upload (≤ maxUploadBytes).', {
    type: 'string',
    pattern: '^\\d{1,15}$',
  }),
  UploadDeferLength: header('Upload-Defer-Length', 'The length comes with a later PATCH.', { const: '1' }),
  UploadMetadata: header(
    'Upload-Metadata',
    '`key base64,key2 base64,…`; `filename` (or `name`) names the file, `filetype` (or `contentType`, `type`) gives its type.',
    { type: 'string' },
  ),
  UploadOffset: header(
    'Upload-Offset',
    "The offset this chunk starts at; must equal the storage's.",
    {
      type: 'string',
      pattern: '^\\d{1,15}$',
    },
    true,
  ),
  UploadChecksum: header(
    'Upload-Checksum',
    `\`<algorithm> <base64 digest>\` (${TUS_CHECKSUMS}): the body is held (≤ uploadBlockBytes) and appended only when it matches (else 460).`,
    { type: 'string' },
  ),
};

const p = (name: string) => ref('parameters', name);
const SIGNED = [p('SignedExp'), p('SignedKid'), p('SignedSig')];
const CONDITIONAL = [
  p('Range'),
  p('IfRange'),
  p('IfMatch'),
  p('IfNoneMatch'),
  p('IfModifiedSince'),
  p('IfUnmodifiedSince'),
];

// --- responses ---------------------------------------------------------------------------------

/** Headers specific to a problem status. */
const PROBLEM_HEADERS: Record<number, HeaderSet> = {
  401: { WWWAuthenticate: false },
  409: { UploadOffset: false },
  412: { ETag: false, TusVersion: false },
  // the gateway's own range check sends these; a storage's RANGE error (a race) does not
  416: { ContentRange: false, AcceptRanges: false, ETag: false },
  // the gateway's lock sends Retry-After; a storage's BUSY does not
  423: { RetryAfter: false },
  429: { RetryAfter: true },
};

const STATUSES = [...new Set(CODES.flatMap((c) => PROBLEM_CODES[c].status as readonly number[]))].sort(
  (a, b) => a - b,
);

function problemResponses(): Obj {
  const out: Obj = {};
  for (const status of STATUSES) {
    const codes = codesOf(status);
    out[`Problem${status}`] = {
      description: `${answer(status, codes[0] as ProblemCode).title}: ${codes.map((c) => `\`${c}\` (${PROBLEM_CODES[c].when})`).join('; ')}.`,
      // the per-connection 429 of the Node entry is written before any request id exists
      headers: headers({ XRequestId: status !== 429, ...PROBLEM_HEADERS[status] }),
      content: {
        'application/problem+json': {
          schema: {
            allOf: [
              ref('schemas', 'Problem'),
              {
                properties: {
                  status: { const: status },
                  code: { enum: codes },
                  type: { enum: codes.map((c) => answer(status, c).type) },
                },
              },
            ],
          },
        },
      },
    };
  }
  out.OtherProblem = {
    description:
      'Another problem of the Problem table: the statuses listed for an operation are those its own checks and the usual cluster answers give; a rarer cluster answer (say a storage busy or losing a partial file during a chunked upload) comes with its own status.',
    headers: headers({ XRequestId: true }),
    content: { 'application/problem+json': { schema: ref('schemas', 'Problem') } },
  };
  out.HeadersTooLarge = {
    description:
      "Request Header Fields Too Large: the request head is over limits.maxHeaderBytes (Node entry only; Node's HTTP server answers it with no body and closes the connection).",
  };
  return out;
}

/** The error statuses of an operation, each pointing at its shared problem response. */
function errors(...statuses: number[]): Obj {
  const out: Obj = {};
  for (const s of [...statuses, 500].sort((a, b) => a - b)) {
    if (!STATUSES.includes(s)) throw new Error(`openapi: no problem code has status ${s}`);
    out[String(s)] = ref('responses', `Problem${s}`);
  }
  out['431'] = ref('responses', 'HeadersTooLarge');
  out.default = ref('responses', 'OtherProblem');
  return out;
}

/** Statuses the storage cluster can answer any request that reaches it with. */
const CLUSTER = [502, 503];

const fileHeaders = (extra: HeaderSet = {}): Obj =>
  headers({
    XRequestId: true,
    ETag: true,
    LastModified: true,
    CacheControl: true,
    AcceptRanges: true,
    ContentLength: true,
    ContentDisposition: false,
    ContentSecurityPolicy: true,
    XContentTypeOptions: true,
    ...extra,
  });

const BYTES = {
  '*/*': {
    schema: {
      description: 'The bytes of the file, with the Content-Type recorded at upload (or from the name).',
    },
  },
};

function fileResponses(head: boolean, tus: boolean): Obj {
  const tusHeaders: HeaderSet = tus ? { TusResumable: true } : {};
  return {
    '200': {
      description: head ? 'The headers of the whole file, no body.' : 'The whole file.',
      headers: fileHeaders(tusHeaders),
      ...(head ? {} : { content: BYTES }),
    },
    '206': {
      description: head
        ? 'The headers of the range, no body.'
        : 'One byte range (single part, never multipart/byteranges).',
      headers: fileHeaders({ ContentRange: true, ...tusHeaders }),
      ...(head ? {} : { content: BYTES }),
    },
    '304': {
      description: 'Not modified (If-None-Match / If-Modified-Since).',
      headers: headers({
        XRequestId: true,
        ETag: true,
        LastModified: true,
        CacheControl: true,
        AcceptRanges: true,
        ContentSecurityPolicy: true,
        XContentTypeOptions: true,
        ...tusHeaders,
      }),
    },
    // downloadsPerClient counts GETs only: a HEAD holds no storage stream
    ...errors(400, 401, 403, 404, 412, 416, ...(head ? [] : [429]), ...CLUSTER),
  };
}

// --- schemas -----------------------------------------------------------------------------------

const SCHEMAS: Obj = {
  Problem: {
    type: 'object',
    description:
      'RFC 9457 problem details (`application/problem+json`; HEAD gets the status and headers only).',
    required: ['type', 'title', 'status', 'detail', 'code'],
    properties: {
      type: {
        type: 'string',
        enum: CODES.map((c) => answer(400, c).type),
        description: '`urn:dsm:problem:<code in kebab case>`.',
      },
      title: str('The HTTP reason phrase of the status.'),
      status: { type: 'integer', enum: STATUSES },
      detail: str(
        "What went wrong, in the gateway's words (a cluster's own text goes to the log, never here).",
      ),
      code: {
        type: 'string',
        enum: CODES,
        description: `The stable code. ${CODES.map((c) => `\`${c}\` ${PROBLEM_CODES[c].status.join('/')}: ${PROBLEM_CODES[c].when}`).join('. ')}.`,
      },
      instance: str('The request path.'),
      requestId: str('The X-Request-Id of the request (not on problems answered before routing).'),
      reason: {
        enum: ['missing', 'expired', 'invalid'],
        description: '401 only: why the credential was refused.',
      },
      trackers: {
        type: 'array',
        items: ref('schemas', 'TrackerCheck'),
        description: '/readyz 503 with the admin token.',
      },
      cache: { ...ref('schemas', 'CacheCheck'), description: '/readyz 503 with the admin token.' },
    },
  },
  UploadedFile: {
    type: 'object',
    required: ['id', 'size', 'sha256', 'contentType', 'url', 'lastModified', 'downloadPolicy'],
    properties: {
      id: str('The public id.'),
      size: int('Bytes.'),
      sha256: str('SHA-256 of the bytes, hex.', { pattern: '^[0-9a-f]{64}$' }),
      contentType: str('The type recorded (or sniffed by the storage).'),
      url: str('Where the file is served.', { format: 'uri' }),
      namedUrl: str('`url/<filename>`, when a filename was given.', { format: 'uri' }),
      lastModified: str('Commit time.', { format: 'date-time' }),
      downloadPolicy: ref('schemas', 'DownloadPolicy'),
    },
  },
  FileMeta: {
    type: 'object',
    required: [
      'id',
      'app',
      'user',
      'fileId',
      'size',
      'sha256',
      'contentType',
      'etag',
      'lastModified',
      'url',
      'downloadPolicy',
    ],
    properties: {
      id: str('The public id.'),
      app: str('App id (1–15 bytes).'),
      user: str('User id (≤ 255 bytes).'),
      fileId: str('The file id within the user.'),
      size: int('Bytes.'),
      sha256: str('SHA-256 of the bytes, hex.', { pattern: '^[0-9a-f]{64}$' }),
      contentType: str('The type recorded.'),
      etag: str('The ETag of downloads.'),
      lastModified: str('Commit time.', { format: 'date-time' }),
      url: str('Where the file is served.', { format: 'uri' }),
      downloadPolicy: ref('schemas', 'DownloadPolicy'),
    },
  },
  DownloadPolicy: {
    enum: ['public', 'signed'],
    description: '`signed`: downloads need a signed URL (config downloads.default / downloads.apps).',
  },
  UploadForm: {
    type: 'object',
    description:
      'The file is the first part with a filename (or named `file`); fields before it: `type` (its Content-Type), `filename`. Later parts are read and dropped; the file is committed after the closing delimiter.',
    properties: {
      type: str("Content type of the file (else the part's Content-Type, else by extension)."),
      filename: str('Name of the file.'),
      file: { description: 'The bytes.', contentMediaType: 'application/octet-stream' },
    },
    required: ['file'],
  },
  Health: { type: 'object', required: ['status'], properties: { status: { const: 'ok' } } },
  Readiness: {
    type: 'object',
    required: ['status'],
    properties: {
      status: { const: 'ready' },
      trackers: {
        type: 'array',
        items: ref('schemas', 'TrackerCheck'),
        description: 'With the admin token only.',
      },
      cache: { ...ref('schemas', 'CacheCheck'), description: 'With the admin token only.' },
    },
  },
  TrackerCheck: {
    type: 'object',
    required: ['address', 'ok'],
    properties: { address: { type: 'string' }, ok: { type: 'boolean' }, error: { type: 'string' } },
  },
  CacheCheck: {
    type: 'object',
    required: ['ok'],
    properties: { ok: { type: 'boolean' }, error: { type: 'string' } },
  },
};

// --- security ----------------------------------------------------------------------------------

const SECURITY_SCHEMES: Obj = {
  bearerJwt: {
    type: 'http',
    scheme: 'bearer',
    bearerFormat: 'JWT',
    description:
      'auth.mode `jwt`: HS256 (the `kid` header names a key of auth.hs256Keys) or any algorithm of auth.jwksUrl; claims `app` (the dsm app id, 1–15 bytes), `sub` (the user id), `exp` (unless auth.requireExp is off), `iss`/`aud` when configured. In mode `none`, or with auth.allowAnonymousUploads, uploads without a token go in as auth.defaultApp / auth.defaultUser.',
  },
  signedUrl: {
    type: 'apiKey',
    in: 'query',
    name: 'sig',
    description:
      'Downloads of an app whose policy is `signed`: `?exp=<unix seconds>&kid=<key id>&sig=<base64url HMAC-SHA256(key, path + "\\n" + exp)>` over the exact path requested (`dsm sign`). Missing, unknown key, tampered, expired or too long-lived: 401.',
  },
  adminToken: {
    type: 'http',
    scheme: 'bearer',
    description:
      'admin.token (≥ 32 bytes): unlocks /metrics and the details of /readyz on the public listener.',
  },
};

const OPTIONAL_TOKEN = [{ bearerJwt: [] }, {}];
const TOKEN = [{ bearerJwt: [] }];
const MAYBE_SIGNED = [{}, { signedUrl: [] }];

// --- paths -------------------------------------------------------------------------------------

const json = (schema: Obj) => ({ 'application/json': { schema } });

function tusOptions(): Obj {
  return {
    tags: ['tus'],
    summary: 'tus discovery',
    description:
      'The versions, extensions, maximum size and checksum algorithms. (A CORS preflight, with Access-Control-Request-Method, is answered by the CORS layer instead.)',
    responses: {
      '204': {
        description: 'What this server supports.',
        headers: headers({
          XRequestId: true,
          TusResumable: true,
          TusVersion: true,
          TusExtension: true,
          TusMaxSize: true,
          TusChecksumAlgorithm: true,
        }),
      },
      ...errors(),
    },
  };
}

function fileGet(operationId: string, head: boolean, tus: boolean, params: Obj[]): Obj {
  return {
    tags: [tus ? 'tus' : 'files'],
    operationId,
    summary: head ? 'The headers of a file' : tus ? 'The finished upload, as a file' : 'Download a file',
    description: tus
      ? 'A finished upload serves its file, as GET /files/{id} does; an upload still in progress is 404.'
      : 'Conditional requests (ETag, Last-Modified), one byte range, `Cache-Control: public, max-age=31536000, immutable` (ids are never reused). The body is streamed as the client reads it.',
    parameters: [...params, ...SIGNED, ...CONDITIONAL],
    security: MAYBE_SIGNED,
    responses: fileResponses(head, tus),
  };
}

function paths(): Obj {
  const tusHeader = [p('TusResumable')];
  const tusReply = (status: string, description: string, set: HeaderSet) => ({
    [status]: { description, headers: headers({ XRequestId: true, TusResumable: true, ...set }) },
  });
  return {
    '/files': {
      post: {
        tags: ['files'],
        operationId: 'uploadFile',
        summary: 'Upload a file',
        description:
          'A raw body with Content-Length streams to one storage as one upload (committed whole or not at all); without a length (chunked) or as multipart/form-data it goes in blocks of uploadBlockBytes. The 201 comes after the commit. A declared Content-Length over maxUploadBytes is refused before the body is read.',
        parameters: [p('UploadFilename')],
        security: OPTIONAL_TOKEN,
        requestBody: {
          required: true,
          content: {
            'multipart/form-data': { schema: ref('schemas', 'UploadForm') },
            '*/*': {
              schema: {
                description:
                  'The bytes; the Content-Type is recorded (none, application/octet-stream or application/x-www-form-urlencoded: the storage sniffs).',
              },
            },
          },
        },
        responses: {
          '201': {
            description: 'Stored.',
            headers: headers({ XRequestId: true, Location: true, CacheControl: true }),
            content: json(ref('schemas', 'UploadedFile')),
          },
          ...errors(400, 401, 403, 413, 429, ...CLUSTER, 507),
        },
      },
    },
    '/files/{id}': {
      get: fileGet('downloadFile', false, false, [p('FileId')]),
      head: fileGet('headFile', true, false, [p('FileId')]),
      delete: {
        tags: ['files'],
        operationId: 'deleteFile',
        summary: 'Delete a file',
        description:
          "Needs auth.mode jwt and the owner's token (`app` and `sub` equal to the id's); every gateway drops what it cached of the file.",
        parameters: [p('FileId')],
        security: TOKEN,
        responses: {
          '204': { description: 'Deleted.', headers: headers({ XRequestId: true }) },
          ...errors(400, 401, 403, 404, ...CLUSTER),
        },
      },
    },
    '/files/{id}/{filename}': {
      get: fileGet('downloadNamedFile', false, false, [p('FileId'), p('FileName')]),
      head: fileGet('headNamedFile', true, false, [p('FileId'), p('FileName')]),
    },
    '/files/{id}/meta': {
      get: {
        tags: ['files'],
        operationId: 'fileMeta',
        summary: "A file's metadata",
        parameters: [p('FileId'), ...SIGNED],
        security: MAYBE_SIGNED,
        responses: {
          '200': {
            description: 'The metadata.',
            headers: headers({ XRequestId: true, CacheControl: true }),
            content: json(ref('schemas', 'FileMeta')),
          },
          ...errors(400, 401, 403, 404, ...CLUSTER),
        },
      },
    },
    '/tus': {
      description: `tus ${TUS_VERSION} (extensions ${TUS_EXTENSIONS}). Also served at \`/tus/\`. Every reply carries Tus-Resumable.`,
      options: { operationId: 'tusOptions', ...tusOptions() },
      post: {
        tags: ['tus'],
        operationId: 'tusCreate',
        summary: 'Create an upload (creation, creation-with-upload)',
        description:
          'The upload id is the public id the file will have. With a body (`Content-Type: application/offset+octet-stream`) the first chunk goes in too; if that body fails the upload still exists and the 201 carries the offset reached. `Upload-Length: 0` commits at once.',
        parameters: [
          ...tusHeader,
          p('UploadLength'),
          p('UploadDeferLength'),
          p('UploadMetadata'),
          p('UploadChecksum'),
        ],
        security: OPTIONAL_TOKEN,
        requestBody: { required: false, content: { 'application/offset+octet-stream': {} } },
        responses: {
          ...tusReply('201', 'Created.', {
            Location: true,
            UploadExpires: true,
            UploadOffset: false,
            DsmFileId: false,
          }),
          ...errors(400, 401, 403, 412, 413, 429, ...CLUSTER, 507),
        },
      },
    },
    '/tus/{id}': {
      options: { operationId: 'tusOptionsUpload', ...tusOptions() },
      head: {
        tags: ['tus'],
        operationId: 'tusOffset',
        summary: "An upload's offset",
        description: 'A finished upload answers offset = length and its Dsm-File-Id.',
        parameters: [p('UploadId'), ...tusHeader],
        security: OPTIONAL_TOKEN,
        responses: {
          ...tusReply('200', 'Where the upload stands.', {
            CacheControl: true,
            UploadOffset: true,
            UploadLength: false,
            UploadDeferLength: false,
            UploadMetadata: false,
            UploadExpires: false,
            DsmFileId: false,
          }),
          ...errors(400, 401, 403, 404, 410, 412, ...CLUSTER),
        },
      },
      get: fileGet('tusDownload', false, true, [p('UploadId')]),
      patch: {
        tags: ['tus'],
        operationId: 'tusAppend',
        summary: 'Append a chunk',
        description:
          'One PATCH per upload at a time across all gateways (423 otherwise). The storage keeps every byte that arrived: after an interruption, ask HEAD and continue. The last byte commits the file (Dsm-File-Id). A repeated final PATCH of a finished upload is answered 204.',
        parameters: [p('UploadId'), ...tusHeader, p('UploadOffset'), p('UploadLength'), p('UploadChecksum')],
        security: OPTIONAL_TOKEN,
        requestBody: { required: true, content: { 'application/offset+octet-stream': {} } },
        responses: {
          ...tusReply('204', 'Appended.', { UploadOffset: true, UploadExpires: false, DsmFileId: false }),
          ...errors(400, 401, 403, 404, 409, 410, 412, 413, 415, 423, 429, 460, ...CLUSTER, 507),
        },
      },
      delete: {
        tags: ['tus'],
        operationId: 'tusTerminate',
        summary: 'Terminate an upload',
        description:
          'An upload in progress is dropped; a finished one is a file, and is deleted (as tusd does).',
        parameters: [p('UploadId'), ...tusHeader],
        security: TOKEN,
        responses: {
          ...tusReply('204', 'Terminated.', {}),
          ...errors(400, 401, 403, 404, 412, 423, ...CLUSTER),
        },
      },
    },
    '/healthz': {
      get: {
        tags: ['operations'],
        operationId: 'health',
        summary: 'Liveness',
        responses: {
          '200': {
            description: 'The process is up.',
            headers: headers({ XRequestId: true, CacheControl: true }),
            content: json(ref('schemas', 'Health')),
          },
          ...errors(),
        },
      },
    },
    '/readyz': {
      get: {
        tags: ['operations'],
        operationId: 'ready',
        summary: 'Readiness',
        description:
          'Ready when a tracker answers a PING and the cache answers. The details come with the admin token (or on the admin listener).',
        security: [{}, { adminToken: [] }],
        responses: {
          '200': {
            description: 'Ready.',
            headers: headers({ XRequestId: true, CacheControl: true }),
            content: json(ref('schemas', 'Readiness')),
          },
          ...errors(503),
        },
      },
    },
    '/metrics': {
      get: {
        tags: ['operations'],
        operationId: 'metrics',
        summary: 'Prometheus metrics',
        description:
          'Served here only with the admin token (otherwise 404, as for an unknown path); the admin listener (admin.listen) serves it to anyone who can reach it. Not on the Worker.',
        security: [{ adminToken: [] }],
        responses: {
          '200': {
            description: 'Prometheus text exposition.',
            headers: headers({ XRequestId: true, CacheControl: true }),
            content: { 'text/plain': { schema: { type: 'string' } } },
          },
          ...errors(404),
        },
      },
    },
    '/openapi.json': {
      get: {
        tags: ['operations'],
        operationId: 'openapi',
        summary: 'This document',
        parameters: [p('IfNoneMatch')],
        responses: {
          '200': {
            description: 'The OpenAPI 3.1 document.',
            headers: headers({ XRequestId: true, CacheControl: true, ETag: true }),
            content: json({ type: 'object' }),
          },
          '304': {
            description: 'Not modified.',
            headers: headers({ XRequestId: true, CacheControl: true, ETag: true }),
          },
          ...errors(),
        },
      },
    },
  };
}

export interface OpenApiOptions {
  /** config.publicUrl: becomes the document's server (default: relative to where it is served). */
  publicUrl?: string;
}

/** The OpenAPI 3.1 document of the gateway (a new object each call). */
export function openApiDocument(opts: OpenApiOptions = {}): Record<string, unknown> {
  return {
    openapi: '3.1.0',
    info: {
      title: 'dsm gateway',
      version: GATEWAY_API_VERSION,
      description:
        'The HTTP edge of dsm, a distributed store for streaming media: REST and tus uploads, range-streamed downloads, deletes. Every reply carries X-Request-Id; every error is an RFC 9457 problem with a stable `code`. CORS preflights (any path) are answered by the CORS layer from config corsOrigins.',
    },
    ...(opts.publicUrl ? { servers: [{ url: opts.publicUrl.replace(/\/+$/, '') }] } : {}),
    tags: [
      { name: 'files', description: 'Upload, download, metadata, delete.' },
      { name: 'tus', description: `Resumable uploads, tus ${TUS_VERSION}.` },
      { name: 'operations', description: 'Health, readiness, metrics, this document.' },
    ],
    paths: paths(),
    components: {
      schemas: SCHEMAS,
      parameters: PARAMETERS,
      headers: headerComponents(),
      responses: problemResponses(),
      securitySchemes: SECURITY_SCHEMES,
    },
  };
}

/**
 * Serves the document at `GET /openapi.json` (app.ts calls this). Built and hashed once; the
 * reply is cacheable and revalidated by its ETag.
 */
export function registerOpenApi<E extends Env>(app: Hono<E>, opts: OpenApiOptions = {}): void {
  const body = JSON.stringify(openApiDocument(opts));
  let etag: Promise<string> | undefined;
  app.get('/openapi.json', async (c) => {
    etag ??= crypto.subtle
      .digest('SHA-256', new TextEncoder().encode(body))
      .then((d) => `"${[...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, '0')).join('')}"`);
    const tag = await etag;
    const h = { ETag: tag, 'Cache-Control': 'public, max-age=300' };
    const inm = c.req.header('if-none-match');
    if (inm !== undefined && weakMatch(inm, tag)) return c.body(null, 304, h);
    return c.body(body, 200, { ...h, 'Content-Type': 'application/json' });
  });
}
