import { decodeCString, encodeUtf8, readI16, writeI16 } from '../bytes.ts';
import { ERROR_DESC_MAX, Errno } from '../constants.ts';
import { ProtocolError } from '../errors.ts';

/**
 * Error reply body (header status 0xFD, command = the server's reply code):
 * | offset | size    | field                                                   |
 * | 0      | 2       | error number, i16 BE (the seed always sends −1)          |
 * | 2      | 0..1024 | description + NUL; omitted when empty. Truncated to 1023 |
 * bytes (on a UTF-8 character boundary); a NUL in the message ends it.
 */
export interface ErrorReply {
  errno: number;
  message: string;
}

export function encodeErrorReply(e: ErrorReply): Uint8Array {
  let desc = encodeUtf8(e.message);
  const nul = desc.indexOf(0);
  if (nul >= 0) desc = desc.subarray(0, nul); // the receiver would stop there anyway
  if (desc.length > ERROR_DESC_MAX - 1) {
    // Cut on a character boundary: never leave half a UTF-8 sequence on the wire.
    let cut = ERROR_DESC_MAX - 1;
    while (cut > 0 && ((desc[cut] as number) & 0xc0) === 0x80) cut--;
    desc = desc.subarray(0, cut);
  }
  const body = new Uint8Array(2 + (desc.length > 0 ? desc.length + 1 : 0));
  writeI16(body, 0, e.errno);
  body.set(desc, 2);
  return body;
}

export function decodeErrorReply(body: Uint8Array): ErrorReply {
  if (body.length < 2 || body.length > 2 + ERROR_DESC_MAX) {
    throw new ProtocolError(`Invalid Error Body Length: ${body.length}`, Errno.BAD_LENGTH);
  }
  return { errno: readI16(body, 0), message: body.length > 2 ? decodeCString(body.subarray(2)) : '' };
}
