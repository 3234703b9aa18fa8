/**
 * Content types by file extension, for files stored without one (the path form's name decides).
 * A Map: the extension comes from the request, and `constructor` or `__proto__` must find nothing.
 */
const TYPES = new Map<string, string>(
  Object.entries({
    mp4: 'video/mp4',
    m4v: 'video/mp4',
    m4a: 'audio/mp4',
    mov: 'video/quicktime',
    webm: 'video/webm',
    mkv: 'video/x-matroska',
    ts: 'video/mp2t',
    m3u8: 'application/vnd.apple.mpegurl',
    mpd: 'application/dash+xml',
    mp3: 'audio/mpeg',
    aac: 'audio/aac',
    ogg: 'audio/ogg',
    oga: 'audio/ogg',
    ogv: 'video/ogg',
    opus: 'audio/opus',
    wav: 'audio/wav',
    flac: 'audio/flac',
    jpg: 'image/jpeg',
    jpeg: 'image/jpeg',
    png: 'image/png',
    gif: 'image/gif',
    webp: 'image/webp',
    avif: 'image/avif',
    pdf: 'application/pdf',
    txt: 'text/plain; charset=utf-8',
    json: 'application/json',
    vtt: 'text/vtt; charset=utf-8',
    srt: 'application/x-subrip',
  }),
);

export function typeForName(name: string | undefined): string | undefined {
  if (!name) return undefined;
  const dot = name.lastIndexOf('.');
  if (dot < 0) return undefined;
  return TYPES.get(name.slice(dot + 1).toLowerCase());
}

/**
 * Media types a browser may show inline from our origin: they cannot run script. Everything
 * else (HTML, SVG, XML, PDF, JSON, anything unknown) is served as an attachment.
 */
const INLINE_EXACT = new Set([
  'image/png',
  'image/jpeg',
  'image/gif',
  'image/webp',
  'image/avif',
  'application/vnd.apple.mpegurl',
  'application/x-mpegurl',
  'application/dash+xml',
  'text/plain',
]);

/** The bare, lower-cased media type of a Content-Type value (parameters dropped). */
export function essenceOf(contentType: string): string {
  return (contentType.split(';')[0] as string).trim().toLowerCase();
}

export function isInlineType(contentType: string): boolean {
  const t = essenceOf(contentType);
  if (INLINE_EXACT.has(t)) return true;
  // video/* and audio/*: a well-formed subtype only (no `video/x;` tricks, no empty subtype)
  return /^(video|audio)\/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$/.test(t);
}

/** Sandboxes whatever a file is, should a browser render it anyway. */
export const FILE_CSP = "sandbox; default-src 'none'";

/**
 * `Content-Disposition` of a file response: inline (with the name, when the path gave one) for
 * the allow-list, `attachment` for the rest; undefined = inline without a name.
 */
export function dispositionFor(contentType: string, filename?: string): string | undefined {
  const name = filename ? `; filename*=UTF-8''${encodeURIComponent(filename)}` : '';
  if (!isInlineType(contentType)) return `attachment${name}`;
  return filename ? `inline${name}` : undefined;
}
