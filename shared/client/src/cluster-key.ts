import { DsmError, ErrorCode } from '@dsm/common/errors';
import { KEY_ID_RE } from '@dsm/packets';

/**
 * A cluster key of the node protocol: its id (several are valid during a rotation) and its
 * secret (at least 32 bytes). Used with WebCrypto, so it works in Node and in a Worker.
 */
export interface ClusterKey {
  id: string;
  secret: Uint8Array;
}

export const MIN_CLUSTER_SECRET_BYTES = 32;

/**
 * A ClusterKey from an id and the text of a key file or variable (one trailing newline is not
 * part of the secret). Bad ids and short secrets are DSM_ERR_CONFIG naming `where`.
 */
export function clusterKey(id: string, secretText: string, where = 'cluster key'): ClusterKey {
  if (!KEY_ID_RE.test(id)) {
    throw new DsmError(ErrorCode.CONFIG, `${where}: key id "${id}" is not 1-32 of [A-Za-z0-9._-]`);
  }
  const secret = new TextEncoder().encode(secretText.replace(/\r?\n$/, ''));
  if (secret.length < MIN_CLUSTER_SECRET_BYTES) {
    throw new DsmError(
      ErrorCode.CONFIG,
      `${where}: the secret is ${secret.length} bytes; at least ${MIN_CLUSTER_SECRET_BYTES} are needed`,
    );
  }
  return { id, secret };
}

const imported = new WeakMap<ClusterKey, Promise<CryptoKey>>();

/** HMAC-SHA-256 with WebCrypto (crypto.subtle: Node ≥ 20 and Workers alike). */
export async function hmacSha256(key: ClusterKey, data: Uint8Array): Promise<Uint8Array> {
  let k = imported.get(key);
  if (!k) {
    k = crypto.subtle.importKey('raw', key.secret as BufferSource, { name: 'HMAC', hash: 'SHA-256' }, false, [
      'sign',
    ]);
    imported.set(key, k);
  }
  return new Uint8Array(await crypto.subtle.sign('HMAC', await k, data as BufferSource));
}
