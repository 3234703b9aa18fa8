import { encodeUtf8, readFixed, writeFixed } from '../bytes.ts';
import { AUTH_NONCE_LENGTH, AUTH_PROOF_LENGTH, Errno, KEY_ID_WIDTH } from '../constants.ts';
import { ProtocolError } from '../errors.ts';

/**
 * Node-protocol authentication (extension; the seed's frames are unchanged). A connection
 * proves it holds a cluster key, and the server proves it back, in two exchanges:
 *
 * | step | command              | body                                              | bytes |
 * |------|----------------------|---------------------------------------------------|-------|
 * | 1    | AUTH_CHALLENGE (2)   | empty                                             | 0     |
 * |      | reply (100/101/102)  | server nonce (random, one per connection)         | 32    |
 * | 2    | AUTH_PROVE (3)       | key id (33, NUL-terminated) · client nonce (32) · client proof (32) | 97 |
 * |      | reply (100/101/102)  | server proof                                      | 32    |
 *
 * proof = HMAC-SHA-256(secret of key id, label ‖ 0x00 ‖ server nonce ‖ client nonce ‖ key id field)
 * with label `dsm-node-auth-v1 client` for the client's proof and `dsm-node-auth-v1 server`
 * for the server's. The server nonce makes a proof good for one connection only; the client
 * nonce makes the server's proof fresh; the two labels keep one proof from being reflected as
 * the other. A wrong key, an unknown key id or a proof without a challenge is an error reply
 * with errno UNAUTHORIZED, and the connection is closed.
 */

/** Key ids: 1-32 of [A-Za-z0-9._-]. */
export const KEY_ID_RE = /^[A-Za-z0-9._-]{1,32}$/;
export const AUTH_PROVE_LENGTH = KEY_ID_WIDTH + AUTH_NONCE_LENGTH + AUTH_PROOF_LENGTH;
export const AUTH_CLIENT_LABEL = 'dsm-node-auth-v1 client';
export const AUTH_SERVER_LABEL = 'dsm-node-auth-v1 server';

export interface AuthProve {
  keyId: string;
  clientNonce: Uint8Array;
  proof: Uint8Array;
}

function checkKeyId(keyId: string): void {
  if (!KEY_ID_RE.test(keyId)) throw new ProtocolError(`Invalid Key Id: ${keyId}`, Errno.BAD_FIELD);
}

function checkLength(b: Uint8Array, n: number, field: string): void {
  if (b.length !== n)
    throw new ProtocolError(`Invalid ${field} Length: ${b.length} != ${n}`, Errno.BAD_LENGTH);
}

/** Reply to AUTH_CHALLENGE: the server nonce. */
export function encodeAuthChallengeReply(serverNonce: Uint8Array): Uint8Array {
  checkLength(serverNonce, AUTH_NONCE_LENGTH, 'Nonce');
  return serverNonce.slice();
}

export function decodeAuthChallengeReply(b: Uint8Array): Uint8Array {
  checkLength(b, AUTH_NONCE_LENGTH, 'Body');
  return b.slice();
}

export function encodeAuthProve(m: AuthProve): Uint8Array {
  checkKeyId(m.keyId);
  checkLength(m.clientNonce, AUTH_NONCE_LENGTH, 'Nonce');
  checkLength(m.proof, AUTH_PROOF_LENGTH, 'Proof');
  const b = new Uint8Array(AUTH_PROVE_LENGTH);
  writeFixed(b, 0, KEY_ID_WIDTH, m.keyId, 'key id');
  b.set(m.clientNonce, KEY_ID_WIDTH);
  b.set(m.proof, KEY_ID_WIDTH + AUTH_NONCE_LENGTH);
  return b;
}

export function decodeAuthProve(b: Uint8Array): AuthProve {
  checkLength(b, AUTH_PROVE_LENGTH, 'Body');
  const keyId = readFixed(b, 0, KEY_ID_WIDTH, 'key id');
  checkKeyId(keyId);
  return {
    keyId,
    clientNonce: b.slice(KEY_ID_WIDTH, KEY_ID_WIDTH + AUTH_NONCE_LENGTH),
    proof: b.slice(KEY_ID_WIDTH + AUTH_NONCE_LENGTH),
  };
}

/** Reply to AUTH_PROVE: the server's proof. */
export function encodeAuthProveReply(proof: Uint8Array): Uint8Array {
  checkLength(proof, AUTH_PROOF_LENGTH, 'Proof');
  return proof.slice();
}

export function decodeAuthProveReply(b: Uint8Array): Uint8Array {
  checkLength(b, AUTH_PROOF_LENGTH, 'Body');
  return b.slice();
}

/** The bytes a proof is the HMAC of (see the table above). */
export function authTranscript(
  label: typeof AUTH_CLIENT_LABEL | typeof AUTH_SERVER_LABEL,
  serverNonce: Uint8Array,
  clientNonce: Uint8Array,
  keyId: string,
): Uint8Array {
  checkKeyId(keyId);
  checkLength(serverNonce, AUTH_NONCE_LENGTH, 'Nonce');
  checkLength(clientNonce, AUTH_NONCE_LENGTH, 'Nonce');
  const l = encodeUtf8(label);
  const out = new Uint8Array(l.length + 1 + 2 * AUTH_NONCE_LENGTH + KEY_ID_WIDTH);
  out.set(l, 0);
  out[l.length] = 0;
  out.set(serverNonce, l.length + 1);
  out.set(clientNonce, l.length + 1 + AUTH_NONCE_LENGTH);
  writeFixed(out, l.length + 1 + 2 * AUTH_NONCE_LENGTH, KEY_ID_WIDTH, keyId, 'key id');
  return out;
}
