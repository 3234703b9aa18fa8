import { decodeCString, encodeCString, readI64, readU32, writeI64, writeU32 } from '../bytes.ts';
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

/** Most ids one range request may ask for (a storage asks for far fewer). */
export const ID_RANGE_MAX = 1_000_000;
/** Range request body: count (4) + key (1..64) + NUL. */
export const ID_RANGE_REQUEST_MIN = 4 + 2;
export const ID_RANGE_REQUEST_MAX = 4 + ID_KEY_MAX + 1;
export const ID_RANGE_REPLY_LENGTH = 16;

export interface IdRangeRequest {
  key: string;
  /** How many ids are asked for, 1..ID_RANGE_MAX. */
  count: number;
}

/** The ids [first, first + count) are the requester's alone. */
export interface IdRange {
  first: number;
  count: number;
}

function checkCount(count: number): void {
  if (!Number.isSafeInteger(count) || count < 1 || count > ID_RANGE_MAX) {
    throw new ProtocolError(`Invalid ID Count: ${count}`, Errno.BAD_FIELD);
  }
}

/**
 * ID range (41), extension, storage → id server. Body: count u32 BE, then the key + one NUL
 * exactly as in ID get (6..69 bytes). Reply (101): 16 bytes, first id i64 + count i64.
 */
export function encodeIdRangeRequest(r: IdRangeRequest): Uint8Array {
  checkCount(r.count);
  const key = encodeIdRequest(r.key);
  const b = new Uint8Array(4 + key.length);
  writeU32(b, 0, r.count);
  b.set(key, 4);
  return b;
}

export function decodeIdRangeRequest(b: Uint8Array): IdRangeRequest {
  if (b.length < ID_RANGE_REQUEST_MIN || b.length > ID_RANGE_REQUEST_MAX) {
    throw new ProtocolError(`Invalid Body Length: ${b.length}`, Errno.BAD_LENGTH);
  }
  const count = readU32(b, 0);
  checkCount(count);
  return { count, key: decodeIdRequest(b.subarray(4)) };
}

export function encodeIdRangeReply(r: IdRange): Uint8Array {
  checkCount(r.count);
  const b = new Uint8Array(ID_RANGE_REPLY_LENGTH);
  writeI64(b, 0, r.first);
  writeI64(b, 8, r.count);
  return b;
}

export function decodeIdRangeReply(b: Uint8Array): IdRange {
  if (b.length !== ID_RANGE_REPLY_LENGTH) {
    throw new ProtocolError(`Invalid Body Length: ${b.length} != ${ID_RANGE_REPLY_LENGTH}`, Errno.BAD_LENGTH);
  }
  const first = readI64(b, 0, 'first id');
  const count = readI64(b, 8, 'id count');
  checkCount(count);
  if (first < 0 || !Number.isSafeInteger(first + count)) {
    throw new ProtocolError(`Invalid ID Range: ${first}+${count}`, Errno.BAD_FIELD);
  }
  return { first, count };
}
