import { Errno } from './constants.ts';
import { ProtocolError } from './errors.ts';

const utf8 = new TextEncoder();
// ignoreBOM: a leading U+FEFF is part of the value (the default would silently strip it, so a
// field starting with it would not round-trip and would differ from its raw bytes).
const utf8Decoder = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });

export function encodeUtf8(s: string): Uint8Array {
  return utf8.encode(s);
}
export function decodeUtf8(b: Uint8Array): string {
  return utf8Decoder.decode(b);
}

/** Writes `value` as a NUL-terminated, zero-padded field of `width` bytes (width includes the NUL). */
export function writeFixed(
  target: Uint8Array,
  offset: number,
  width: number,
  value: string,
  field: string,
): void {
  // encoded in place (no array per field); a value that does not fit whole in width - 1 bytes
  // is measured for the error only
  const room = target.subarray(offset, offset + width - 1);
  const { read, written } = utf8.encodeInto(value, room);
  if (read < value.length) {
    const n = utf8.encode(value).length;
    throw new ProtocolError(`${field} too long: ${n} bytes > ${width - 1}`, Errno.BAD_FIELD);
  }
  if (value.includes('\u0000')) throw new ProtocolError(`${field} contains a NUL byte`, Errno.BAD_FIELD);
  target.fill(0, offset + written, offset + width);
}

/**
 * Reads a fixed-width C string: bytes up to the first NUL, bounded by the width. Bytes after the
 * NUL are ignored (the seed client leaves garbage there). A field with no NUL at all is refused,
 * since the seed's receivers would overrun it.
 */
export function readFixed(source: Uint8Array, offset: number, width: number, field: string): string {
  const region = source.subarray(offset, offset + width);
  const nul = region.indexOf(0);
  if (nul < 0) throw new ProtocolError(`${field} is not NUL-terminated`, Errno.BAD_FIELD);
  return decodeShort(region, nul);
}

/**
 * The first `n` bytes of `b` as UTF-8: short ASCII (ids, names) read in JS, which is several
 * times cheaper than a TextDecoder call for a few dozen bytes; anything else by the decoder.
 */
function decodeShort(b: Uint8Array, n: number): string {
  if (n > 64) return utf8Decoder.decode(b.subarray(0, n));
  for (let i = 0; i < n; i++) if ((b[i] as number) >= 0x80) return utf8Decoder.decode(b.subarray(0, n));
  return String.fromCharCode.apply(null, b.subarray(0, n) as unknown as number[]);
}

/** Raw bytes of a fixed field up to its NUL (for hashing user ids byte-exactly). */
export function readFixedBytes(source: Uint8Array, offset: number, width: number, field: string): Uint8Array {
  const region = source.subarray(offset, offset + width);
  const nul = region.indexOf(0);
  if (nul < 0) throw new ProtocolError(`${field} is not NUL-terminated`, Errno.BAD_FIELD);
  return region.subarray(0, nul);
}

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

const TWO_32 = 4294967296;

export function writeI64(target: Uint8Array, offset: number, value: number): void {
  if (!Number.isSafeInteger(value)) throw new ProtocolError(`not a safe integer: ${value}`, Errno.BAD_FIELD);
  // big-endian, as two 32-bit halves (no BigInt per value): hi is the signed upper half
  const hi = Math.floor(value / TWO_32);
  writeWord(target, offset, hi >>> 0);
  writeWord(target, offset + 4, value - hi * TWO_32);
}

/** Reads a signed 64-bit big-endian integer; values outside the safe range are refused. */
export function readI64(source: Uint8Array, offset: number, field: string): number {
  if (offset < 0 || offset + 8 > source.length)
    throw new RangeError(`${field}: 8 bytes at ${offset} are out of bounds`);
  const hi = readWord(source, offset) | 0;
  // exact: |hi * 2^32 + lo| < 2^53 whenever it is a safe integer, and at least 2^53 otherwise
  const v = hi * TWO_32 + readWord(source, offset + 4);
  if (!Number.isSafeInteger(v)) {
    throw new ProtocolError(`${field} out of range: ${view(source).getBigInt64(offset)}`, Errno.BAD_FIELD);
  }
  return v;
}

function writeWord(t: Uint8Array, o: number, w: number): void {
  t[o] = w >>> 24;
  t[o + 1] = (w >>> 16) & 0xff;
  t[o + 2] = (w >>> 8) & 0xff;
  t[o + 3] = w & 0xff;
}

function readWord(b: Uint8Array, o: number): number {
  return (
    (((b[o] as number) << 24) |
      ((b[o + 1] as number) << 16) |
      ((b[o + 2] as number) << 8) |
      (b[o + 3] as number)) >>>
    0
  );
}

/** Refuses values a fixed-width integer cannot hold (DataView would silently wrap them). */
function checkRange(value: number, min: number, max: number, kind: string): void {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new ProtocolError(`not a valid ${kind}: ${value}`, Errno.BAD_FIELD);
  }
}

export function writeU16(target: Uint8Array, offset: number, value: number): void {
  checkRange(value, 0, 0xffff, 'u16');
  view(target).setUint16(offset, value);
}
export function readU16(source: Uint8Array, offset: number): number {
  return view(source).getUint16(offset);
}
export function writeI16(target: Uint8Array, offset: number, value: number): void {
  checkRange(value, -0x8000, 0x7fff, 'i16');
  view(target).setInt16(offset, value);
}
export function readI16(source: Uint8Array, offset: number): number {
  return view(source).getInt16(offset);
}
export function writeU32(target: Uint8Array, offset: number, value: number): void {
  checkRange(value, 0, 0xffffffff, 'u32');
  view(target).setUint32(offset, value);
}
export function writeI32(target: Uint8Array, offset: number, value: number): void {
  checkRange(value, -0x80000000, 0x7fffffff, 'i32');
  view(target).setInt32(offset, value);
}
export function readI32(source: Uint8Array, offset: number): number {
  return view(source).getInt32(offset);
}
export function readU32(source: Uint8Array, offset: number): number {
  return view(source).getUint32(offset);
}

/**
 * A variable-length string sent with exactly one trailing NUL counted in the body. A NUL inside
 * the value is refused: the receiver would cut the value there.
 */
export function encodeCString(value: string): Uint8Array {
  const bytes = utf8.encode(value);
  if (bytes.includes(0)) throw new ProtocolError('string contains a NUL byte', Errno.BAD_FIELD);
  const out = new Uint8Array(bytes.length + 1);
  out.set(bytes, 0);
  return out;
}

/** Reads a variable-length C string occupying the whole region; tolerates a missing NUL. */
export function decodeCString(region: Uint8Array): string {
  const nul = region.indexOf(0);
  return utf8Decoder.decode(nul < 0 ? region : region.subarray(0, nul));
}

export function concatBytes(parts: readonly Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

export function toHex(b: Uint8Array): string {
  let s = '';
  for (const x of b) s += x.toString(16).padStart(2, '0');
  return s;
}
export function fromHex(hex: string): Uint8Array {
  if (hex.length % 2 !== 0 || /[^0-9a-fA-F]/.test(hex)) throw new Error(`bad hex: ${hex.slice(0, 20)}`);
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = Number.parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  return out;
}

// Base64 on web-standard btoa/atob only (no Buffer), so the same code runs in Node and Workers.

export function toBase64(b: Uint8Array): string {
  let bin = '';
  // In slices: String.fromCharCode(...b) on a large array would exceed the argument limit.
  for (let i = 0; i < b.length; i += 0x8000) bin += String.fromCharCode(...b.subarray(i, i + 0x8000));
  return btoa(bin);
}

/** Standard base64 (padding optional); throws on anything else. */
export function fromBase64(s: string): Uint8Array<ArrayBuffer> {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(s)) throw new Error('not base64');
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** URL-safe base64 without padding (RFC 4648 §5). */
export const toBase64Url = (b: Uint8Array): string =>
  toBase64(b).replaceAll('+', '-').replaceAll('/', '_').replace(/=+$/, '');

/** URL-safe base64, padding not allowed; throws on anything else (including an impossible length). */
export function fromBase64Url(s: string): Uint8Array<ArrayBuffer> {
  if (!/^[A-Za-z0-9_-]*$/.test(s)) throw new Error('not base64url');
  return fromBase64(s.replaceAll('-', '+').replaceAll('_', '/'));
}

/** Constant-time comparison of two byte strings (proofs, digests, ids: no early exit on a difference). */
export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= (a[i] as number) ^ (b[i] as number);
  return d === 0;
}
