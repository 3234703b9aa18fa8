import { DsmError, ErrorCode } from '@dsm/common/errors';
import {
  APPID_WIDTH,
  encodeUtf8,
  FILEID_WIDTH,
  fromBase64Url,
  toBase64Url,
  USERID_WIDTH,
} from '@dsm/packets';

/**
 * The public id of a file: what `dsm upload` prints and what the gateway puts in URLs. It is
 * self-describing, so nothing has to be looked up to find the user's group and the row:
 *
 *   base64url( version=1 | len(app) | app | len(user) | user | len(file) | file )
 *
 * (lengths one byte each, strings UTF-8). URL-safe, no padding.
 */
export interface PublicIdParts {
  appId: string;
  userId: string;
  fileId: string;
}

const VERSION = 1;

export function encodePublicId(p: PublicIdParts): string {
  const a = encodeUtf8(p.appId);
  const u = encodeUtf8(p.userId);
  const f = encodeUtf8(p.fileId);
  if (a.length === 0 || a.length >= APPID_WIDTH)
    throw new DsmError(ErrorCode.BAD_INPUT, 'app id must be 1..15 bytes');
  if (u.length >= USERID_WIDTH) throw new DsmError(ErrorCode.BAD_INPUT, 'user id must be at most 255 bytes');
  if (f.length === 0 || f.length >= FILEID_WIDTH)
    throw new DsmError(ErrorCode.BAD_INPUT, 'file id must be 1..127 bytes');
  const b = new Uint8Array(4 + a.length + u.length + f.length);
  let o = 0;
  b[o++] = VERSION;
  for (const part of [a, u, f]) {
    b[o++] = part.length;
    b.set(part, o);
    o += part.length;
  }
  return toBase64Url(b);
}

/** Longest public id: 4 length/version bytes + the widest fields, in base64url. */
const MAX_ID_CHARS = Math.ceil(((4 + (APPID_WIDTH - 1) + (USERID_WIDTH - 1) + (FILEID_WIDTH - 1)) * 8) / 6);
const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * Decodes a public id from untrusted input (a URL). Every field is bounded by the protocol's
 * widths (app 1..15, user ≤ 255, file 1..127 bytes), strict UTF-8 without NULs, and the text
 * must be the canonical encoding (one id per file: no padding bits, no aliases). Anything else
 * is a BAD_INPUT DsmError, never another exception.
 */
export function decodePublicId(id: string): PublicIdParts {
  const bad = () => new DsmError(ErrorCode.BAD_INPUT, `not a dsm file id: "${String(id).slice(0, 80)}"`);
  if (typeof id !== 'string' || id.length === 0 || id.length > MAX_ID_CHARS || !/^[A-Za-z0-9_-]+$/.test(id))
    throw bad();
  let b: Uint8Array;
  try {
    b = fromBase64Url(id);
  } catch {
    throw bad(); // an impossible length (4n+1 characters)
  }
  if (b.length < 4 || b[0] !== VERSION || toBase64Url(b) !== id) throw bad();
  let o = 1;
  const parts: string[] = [];
  const widths = [APPID_WIDTH, USERID_WIDTH, FILEID_WIDTH];
  for (let i = 0; i < 3; i++) {
    const n = b[o++];
    if (n === undefined || n >= (widths[i] as number) || o + n > b.length) throw bad();
    const s = b.subarray(o, o + n);
    if (s.includes(0)) throw bad();
    try {
      parts.push(strictUtf8.decode(s));
    } catch {
      throw bad();
    }
    o += n;
  }
  if (o !== b.length) throw bad();
  const [appId, userId, fileId] = parts as [string, string, string];
  if (appId.length === 0 || fileId.length === 0) throw bad();
  return { appId, userId, fileId };
}
