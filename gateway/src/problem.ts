import { DsmError, type DsmErrorCode, ErrorCode, GatewayErrorCode } from '@dsm/common/errors';
import { Errno } from '@dsm/packets';

// The gateway's own codes are declared in @dsm/common next to ErrorCode (one union for DsmError.code).
export { GatewayErrorCode };

/** An error that already knows its HTTP status (thrown by the gateway's own checks). */
export class HttpError extends DsmError {
  readonly status: number;
  readonly headers: Record<string, string>;
  readonly extra: Record<string, unknown>;
  constructor(
    status: number,
    code: DsmErrorCode,
    message: string,
    opts: { headers?: Record<string, string>; extra?: Record<string, unknown>; cause?: unknown } = {},
  ) {
    super(code, message, Errno.GENERIC, { cause: opts.cause });
    this.name = 'HttpError';
    this.status = status;
    this.headers = opts.headers ?? {};
    this.extra = opts.extra ?? {};
  }
}

const TITLES: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  405: 'Method Not Allowed',
  409: 'Conflict',
  410: 'Gone',
  411: 'Length Required',
  412: 'Precondition Failed',
  413: 'Content Too Large',
  415: 'Unsupported Media Type',
  416: 'Range Not Satisfiable',
  423: 'Locked',
  429: 'Too Many Requests',
  460: 'Checksum Mismatch',
  500: 'Internal Server Error',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
  507: 'Insufficient Storage',
};

/** The HTTP status for a `DSM_ERR_…` code (errors from the cluster and the client library). */
function statusForCode(code: DsmErrorCode): number {
  switch (code) {
    case ErrorCode.NOT_FOUND:
      return 404;
    case ErrorCode.RANGE:
      return 416;
    case ErrorCode.OFFSET_MISMATCH:
    case ErrorCode.EXISTS:
      return 409;
    case ErrorCode.UNKNOWN_APP:
    case GatewayErrorCode.FORBIDDEN:
      return 403;
    case GatewayErrorCode.TOO_MANY_REQUESTS:
      return 429;
    case ErrorCode.TOO_LARGE:
      return 413;
    case ErrorCode.BAD_INPUT:
    case ErrorCode.CONFIG:
    case GatewayErrorCode.BODY_INCOMPLETE:
      return 400;
    case ErrorCode.NO_SPACE:
      return 507;
    case ErrorCode.NO_STORAGE:
    case ErrorCode.DB_UNAVAILABLE:
    case ErrorCode.CACHE_UNAVAILABLE:
    case ErrorCode.ID_UNAVAILABLE:
    case ErrorCode.CONNECT:
    case ErrorCode.SOCKET:
    case ErrorCode.TIMEOUT:
    case ErrorCode.POOL_FULL:
    case ErrorCode.NOT_JOINED:
    case ErrorCode.IO:
    case GatewayErrorCode.NOT_READY:
      return 503;
    case ErrorCode.PROTOCOL:
    case ErrorCode.REMOTE:
      return 502;
    default:
      return 500;
  }
}

/** Remote errors carry an errno; when the code is generic the errno still tells the story. */
function statusForErrno(errno: number): number | undefined {
  switch (errno) {
    case Errno.NOT_FOUND:
      return 404;
    case Errno.RANGE:
      return 416;
    case Errno.OFFSET_MISMATCH:
    case Errno.EXISTS:
      return 409;
    case Errno.UNKNOWN_APP:
      return 403;
    case Errno.TOO_LARGE:
      return 413;
    case Errno.BAD_FIELD:
    case Errno.BAD_LENGTH:
      return 400;
    case Errno.NO_SPACE:
      return 507;
    case Errno.NO_STORAGE:
    case Errno.DB_UNAVAILABLE:
    case Errno.ID_UNAVAILABLE:
    case Errno.BUSY:
    case Errno.NOT_JOINED:
    case Errno.IO_ERROR:
      return 503;
    default:
      return undefined;
  }
}

/**
 * What a client is told for errors that come from the cluster or the client library. Their own
 * texts name storages (`[host:port] …`), folders and free-space figures: those go to the log
 * (with the request id), never into a reply.
 */
const PUBLIC_DETAIL: Record<number, string> = {
  400: 'the request was refused as malformed',
  401: 'not authorized',
  403: 'not allowed',
  404: 'no such file',
  409: 'the request conflicts with the state of the file',
  413: 'too large',
  416: 'the range is not satisfiable',
  423: 'the upload is busy with another request',
  429: 'too many requests',
  502: 'a storage answered in a way the gateway did not expect',
  503: 'the storage cluster cannot serve this request now; try again',
  507: 'the storage group has no space for this file',
};

/** Codes whose texts are the gateway's own words (no cluster text in them). */
const OWN_WORDS = new Set<DsmErrorCode>([
  GatewayErrorCode.BODY_INCOMPLETE,
  GatewayErrorCode.TOO_MANY_REQUESTS,
]);

export interface Problem {
  status: number;
  headers: Record<string, string>;
  /** The original message when `detail` was replaced by a public text: for the log only. */
  internal?: string;
  body: {
    type: string;
    title: string;
    status: number;
    detail: string;
    code: DsmErrorCode;
    instance?: string;
    [k: string]: unknown;
  };
}

/**
 * The one mapping from any thrown value to an RFC 9457 problem. `type` is a URN built from the
 * stable code, so it never points at a page that may not exist.
 */
export function toProblem(err: unknown, instance?: string): Problem {
  let status = 500;
  let code: DsmErrorCode = GatewayErrorCode.INTERNAL;
  let detail = 'internal error';
  let headers: Record<string, string> = {};
  let extra: Record<string, unknown> = {};
  let internal: string | undefined;
  if (err instanceof HttpError) {
    status = err.status;
    code = err.code;
    detail = err.message;
    headers = err.headers;
    extra = err.extra;
  } else if (
    err instanceof DsmError &&
    (err.code === ErrorCode.UNAUTHORIZED || err.errno === Errno.UNAUTHORIZED)
  ) {
    // The gateway's own 401s are HttpErrors: this one is a node refusing the gateway itself.
    status = 503;
    code = GatewayErrorCode.CLUSTER_AUTH;
    internal = err.message;
    detail = 'the gateway cannot authenticate to the storage cluster';
  } else if (err instanceof DsmError) {
    code = err.code;
    detail = err.message;
    status = statusForCode(code);
    if (status >= 500 || code === ErrorCode.REMOTE) status = statusForErrno(err.errno) ?? status;
    if (err.errno === Errno.BUSY) {
      // a storage's lock on a resumable upload: another append is running
      status = 423;
      code = GatewayErrorCode.LOCKED;
    }
    if (!OWN_WORDS.has(code)) {
      internal = detail;
      detail = PUBLIC_DETAIL[status] ?? (status >= 500 ? 'internal error' : 'the request was refused');
    }
  } else if (isHttpException(err)) {
    internal = err.message;
    status = err.status;
    code =
      status === 413 ? ErrorCode.TOO_LARGE : status >= 500 ? GatewayErrorCode.INTERNAL : ErrorCode.BAD_INPUT;
    detail = TITLES[status] ?? 'error';
  } else if (err instanceof Error) {
    internal = err.message;
  }
  const title = TITLES[status] ?? (status >= 500 ? 'Server Error' : 'Client Error');
  const type = `urn:dsm:problem:${code
    .replace(/^DSM_ERR_/, '')
    .toLowerCase()
    .replaceAll('_', '-')}`;
  return {
    status,
    headers,
    ...(internal !== undefined ? { internal } : {}),
    body: { type, title, status, detail, code, ...(instance ? { instance } : {}), ...extra },
  };
}

function isHttpException(e: unknown): e is { status: number; message: string } {
  return (
    !!e &&
    typeof e === 'object' &&
    (e as { name?: string }).name === 'HTTPException' &&
    typeof (e as { status?: unknown }).status === 'number'
  );
}

export function problemResponse(p: Problem, method: string): Response {
  const headers = new Headers(p.headers);
  headers.set('Content-Type', 'application/problem+json');
  headers.set('Cache-Control', 'no-store');
  headers.set('X-Content-Type-Options', 'nosniff');
  const body = method === 'HEAD' ? null : JSON.stringify(p.body);
  return new Response(body, { status: p.status, headers });
}

// Small constructors for the gateway's own checks.
export const badRequest = (msg: string, extra?: Record<string, unknown>) =>
  new HttpError(400, ErrorCode.BAD_INPUT, msg, { extra });
export const unauthorized = (msg: string, reason: 'missing' | 'expired' | 'invalid', challenge?: string) =>
  new HttpError(401, ErrorCode.UNAUTHORIZED, msg, {
    extra: { reason },
    headers: challenge ? { 'WWW-Authenticate': challenge } : {},
  });
export const forbidden = (msg: string) => new HttpError(403, GatewayErrorCode.FORBIDDEN, msg);
export const notFound = (msg: string) => new HttpError(404, ErrorCode.NOT_FOUND, msg);
export const tooLarge = (msg: string) => new HttpError(413, ErrorCode.TOO_LARGE, msg);
