// Byte ↔ text helpers on web-standard APIs only (btoa/atob, TextEncoder), for Node and Workers.

const te = new TextEncoder();
const td = new TextDecoder('utf-8', { fatal: true });

export const utf8 = (s: string): Uint8Array<ArrayBuffer> => te.encode(s);

/** Strict UTF-8 decoding; throws on invalid bytes. */
export const fromUtf8 = (b: Uint8Array): string => td.decode(b);

export function toHex(b: Uint8Array): string {
  let s = '';
  for (const x of b) s += x.toString(16).padStart(2, '0');
  return s;
}

export function toBase64(b: Uint8Array): string {
  let bin = '';
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

export const toBase64Url = (b: Uint8Array): string =>
  toBase64(b).replaceAll('+', '-').replaceAll('/', '_').replace(/=+$/, '');

export function fromBase64Url(s: string): Uint8Array<ArrayBuffer> {
  if (!/^[A-Za-z0-9_-]*$/.test(s)) throw new Error('not base64url');
  return fromBase64(s.replaceAll('-', '+').replaceAll('_', '/'));
}
