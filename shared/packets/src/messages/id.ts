import { decodeCString, encodeCString, readI64, writeI64 } from '../bytes.ts';
import { Errno, ID_KEY_MAX } from '../constants.ts';
import { ProtocolError } from '../errors.ts';

/**
 * ID get (40), storage → id server. Body: key bytes + one NUL (≤ 65 bytes).
 * Reply (101): body 8 bytes, the id as i64 BE.
 */
export function encodeIdRequest(key: string): Uint8Array {
  if (key.includes('\0')) throw new ProtocolError('Invalid ID Key', Errno.BAD_FIELD);
  const b = encodeCString(key);
  if (b.length < 2 || b.length > ID_KEY_MAX + 1) {
    throw new ProtocolError(`Invalid ID Key Length: ${b.length - 1}`, Errno.BAD_FIELD);
  }
  return b;
}

/** The seed only checked the length; we also require a non-empty, NUL-terminated key. */
export function decodeIdRequest(b: Uint8Array): string {
  if (b.length > ID_KEY_MAX + 1) {
    throw new ProtocolError(`Invalid Body Length: ${b.length} > ${ID_KEY_MAX + 1}`, Errno.BAD_LENGTH);
  }
  if (b.length < 2 || b[b.length - 1] !== 0) throw new ProtocolError('Invalid ID Key', Errno.BAD_FIELD);
  const key = decodeCString(b);
  if (key.length === 0 || b.indexOf(0) !== b.length - 1)
    throw new ProtocolError('Invalid ID Key', Errno.BAD_FIELD);
  return key;
}

export function encodeI64Body(v: number): Uint8Array {
  const b = new Uint8Array(8);
  writeI64(b, 0, v);
  return b;
}

export function decodeI64Body(b: Uint8Array, field = 'value'): number {
  if (b.length !== 8) throw new ProtocolError(`Invalid Body Length: ${b.length} != 8`, Errno.BAD_LENGTH);
  return readI64(b, 0, field);
}
