// Strict UTF-8 helpers on web-standard APIs only, for Node and Workers. Hex and base64 live in
// @dsm/packets (bytes.ts).

const te = new TextEncoder();
const td = new TextDecoder('utf-8', { fatal: true });

export const utf8 = (s: string): Uint8Array<ArrayBuffer> => te.encode(s);

/** Strict UTF-8 decoding; throws on invalid bytes. */
export const fromUtf8 = (b: Uint8Array): string => td.decode(b);
