import { Errno, HEADER_LENGTH, Status } from './constants.ts';
import { ProtocolError } from './errors.ts';

/**
 * Frame header, 10 bytes:
 * | offset | size | field                                            |
 * | 0      | 8    | body length, signed 64-bit big-endian (≥ 0)      |
 * | 8      | 1    | command                                          |
 * | 9      | 1    | status: 0 ok, 0xFD error; requests send 0        |
 */
export interface Header {
  bodyLength: number;
  command: number;
  status: number;
}

/** Command and status are single bytes; DataView would silently wrap larger values. */
function checkByte(v: number, name: string): void {
  if (!Number.isInteger(v) || v < 0 || v > 0xff)
    throw new ProtocolError(`Invalid ${name}: ${v}`, Errno.BAD_FIELD);
}

export function encodeHeader(h: Header, target = new Uint8Array(HEADER_LENGTH), offset = 0): Uint8Array {
  if (!Number.isSafeInteger(h.bodyLength) || h.bodyLength < 0) {
    throw new ProtocolError(`Invalid Body Length: ${h.bodyLength} < 0`, Errno.BAD_LENGTH);
  }
  checkByte(h.command, 'Command');
  checkByte(h.status, 'Status');
  const dv = new DataView(target.buffer, target.byteOffset + offset, HEADER_LENGTH);
  dv.setBigInt64(0, BigInt(h.bodyLength));
  dv.setUint8(8, h.command);
  dv.setUint8(9, h.status);
  return target;
}

/**
 * Decodes a header. The body length is returned as read (it may be negative or beyond the safe
 * integer range, reported as ±Infinity); the frame reader decides what to refuse.
 */
export function decodeHeader(b: Uint8Array, offset = 0): Header {
  const dv = new DataView(b.buffer, b.byteOffset + offset, HEADER_LENGTH);
  const raw = dv.getBigInt64(0);
  let bodyLength: number;
  if (raw > BigInt(Number.MAX_SAFE_INTEGER)) bodyLength = Number.POSITIVE_INFINITY;
  else if (raw < BigInt(Number.MIN_SAFE_INTEGER)) bodyLength = Number.NEGATIVE_INFINITY;
  else bodyLength = Number(raw);
  return { bodyLength, command: dv.getUint8(8), status: dv.getUint8(9) };
}

/** Header + body in one buffer, so a frame goes out in one write (no delayed-ACK stall). */
export function encodeFrame(
  command: number,
  body: Uint8Array = new Uint8Array(0),
  status: number = Status.OK,
): Uint8Array {
  const out = new Uint8Array(HEADER_LENGTH + body.length);
  encodeHeader({ bodyLength: body.length, command, status }, out, 0);
  out.set(body, HEADER_LENGTH);
  return out;
}

/** Header of a frame whose body follows separately (streamed uploads and downloads). */
export function encodeStreamHeader(
  command: number,
  bodyLength: number,
  status: number = Status.OK,
): Uint8Array {
  return encodeHeader({ bodyLength, command, status });
}
