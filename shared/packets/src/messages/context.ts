import { decodeUtf8, encodeUtf8 } from '../bytes.ts';
import { Errno, REQUEST_ID_MAX } from '../constants.ts';
import { ProtocolError } from '../errors.ts';

/**
 * Request context (extension; the seed's frames are unchanged): the request id of the HTTP
 * request (or CLI command) the next request on this connection serves, so that one upload can
 * be followed through the gateway's access log and every node's log.
 *
 * | command              | body                                  | bytes  | reply |
 * |----------------------|---------------------------------------|--------|-------|
 * | REQUEST_CONTEXT (4)  | request id: [A-Za-z0-9_.-], no NUL    | 1-64   | none  |
 *
 * The frame has no reply: a client writes it together with the request it describes (one write,
 * no round trip), and the server attaches the id (`rid` in its log lines) to the next request
 * on the connection only. A second context frame before a request replaces the first. A body
 * that is not a request id is a malformed frame: error reply BAD_FIELD, connection closed.
 */

/** What a request id may be: the gateway's `X-Request-Id` rule (a UUID by default). */
export const REQUEST_ID_RE = /^[A-Za-z0-9_.-]{1,64}$/;

export function isRequestId(s: string): boolean {
  return s.length <= REQUEST_ID_MAX && REQUEST_ID_RE.test(s);
}

export function encodeRequestContext(requestId: string): Uint8Array {
  if (!isRequestId(requestId)) {
    throw new ProtocolError(`Invalid Request Id: ${requestId.slice(0, 80)}`, Errno.BAD_FIELD);
  }
  return encodeUtf8(requestId);
}

export function decodeRequestContext(b: Uint8Array): string {
  const s = b.length <= REQUEST_ID_MAX ? decodeUtf8(b) : '';
  if (!isRequestId(s)) throw new ProtocolError('Invalid Request Id', Errno.BAD_FIELD);
  return s;
}
