/** How many leading bytes `sniffContentType` looks at. */
export const SNIFF_BYTES = 64;

export const DEFAULT_CONTENT_TYPE = 'application/octet-stream';

const ascii = (b: Uint8Array, at: number, s: string): boolean => {
  if (b.length < at + s.length) return false;
  for (let i = 0; i < s.length; i++) if (b[at + i] !== s.charCodeAt(i)) return false;
  return true;
};

const startsWith = (b: Uint8Array, sig: readonly number[]): boolean =>
  b.length >= sig.length && sig.every((x, i) => b[i] === x);

function indexOfAscii(b: Uint8Array, s: string): number {
  outer: for (let i = 0; i + s.length <= b.length; i++) {
    for (let j = 0; j < s.length; j++) if (b[i + j] !== s.charCodeAt(j)) continue outer;
    return i;
  }
  return -1;
}

/**
 * Content type from the first bytes of a file (used when the uploader gave none): the media
 * formats a streaming store meets, else application/octet-stream.
 */
export function sniffContentType(head: Uint8Array): string {
  const b = head.subarray(0, SNIFF_BYTES);
  if (ascii(b, 4, 'ftyp')) return 'video/mp4';
  if (startsWith(b, [0x1a, 0x45, 0xdf, 0xa3])) {
    // EBML: the DocType element names the flavour.
    return indexOfAscii(b, 'webm') >= 0 ? 'video/webm' : 'video/x-matroska';
  }
  if (startsWith(b, [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return 'image/png';
  if (startsWith(b, [0xff, 0xd8, 0xff])) return 'image/jpeg';
  if (ascii(b, 0, 'GIF87a') || ascii(b, 0, 'GIF89a')) return 'image/gif';
  if (ascii(b, 0, 'RIFF') && ascii(b, 8, 'WEBP')) return 'image/webp';
  if (ascii(b, 0, 'RIFF') && ascii(b, 8, 'WAVE')) return 'audio/wav';
  if (ascii(b, 0, 'OggS')) return 'audio/ogg';
  if (ascii(b, 0, '%PDF-')) return 'application/pdf';
  if (ascii(b, 0, 'ID3')) return 'audio/mpeg';
  // MPEG audio frame sync: 11 set bits, a valid layer (not 00).
  if (
    b.length >= 2 &&
    b[0] === 0xff &&
    ((b[1] as number) & 0xe0) === 0xe0 &&
    ((b[1] as number) & 0x06) !== 0
  ) {
    return 'audio/mpeg';
  }
  return DEFAULT_CONTENT_TYPE;
}

/** Content types accepted from uploaders: printable ASCII, ≤ 127 bytes (empty = sniff). */
export function isValidContentType(s: string): boolean {
  return s.length <= 127 && /^[\x20-\x7e]*$/.test(s);
}
