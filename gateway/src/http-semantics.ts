/**
 * HTTP range and conditional-request rules (RFC 9110 §13, §14) for immutable files: pure
 * functions, no I/O, so the Node and Worker entries share them and the tests can be exhaustive.
 */

export type RangeResult =
  | { kind: 'none' }
  /** Inclusive byte positions of the one range served. */
  | { kind: 'range'; start: number; end: number }
  | { kind: 'unsatisfiable' };

const SPEC = /^(\d*)-(\d*)$/;

/**
 * Parses a `Range` header against a file of `size` bytes.
 *
 * - no header, or a unit other than `bytes` → `none` (the whole file, 200);
 * - a `bytes=` header that does not parse → `unsatisfiable` (416), as nginx does;
 * - several ranges → the FIRST satisfiable one only, as a single-part 206 (no multipart/byteranges:
 *   players and CDNs ask for one range, and serving the union could read far more than asked);
 * - no satisfiable range (e.g. start ≥ size, or any range of an empty file) → `unsatisfiable`.
 */
export function parseRange(header: string | undefined | null, size: number): RangeResult {
  if (!header) return { kind: 'none' };
  const eq = header.indexOf('=');
  if (eq < 0) return { kind: 'unsatisfiable' };
  if (header.slice(0, eq).trim().toLowerCase() !== 'bytes') return { kind: 'none' };
  const specs = header
    .slice(eq + 1)
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
  if (specs.length === 0) return { kind: 'unsatisfiable' };
  let first: { start: number; end: number } | undefined;
  for (const spec of specs) {
    const m = SPEC.exec(spec);
    if (!m || (m[1] === '' && m[2] === '')) return { kind: 'unsatisfiable' };
    const a = m[1] === '' ? null : Number(m[1]);
    const b = m[2] === '' ? null : Number(m[2]);
    if ((a !== null && !Number.isSafeInteger(a)) || (b !== null && !Number.isSafeInteger(b))) {
      return { kind: 'unsatisfiable' };
    }
    let r: { start: number; end: number } | undefined;
    if (a === null) {
      // suffix range: the last b bytes
      if ((b as number) > 0 && size > 0) r = { start: Math.max(0, size - (b as number)), end: size - 1 };
    } else {
      if (b !== null && b < a) return { kind: 'unsatisfiable' };
      if (a < size) r = { start: a, end: b === null ? size - 1 : Math.min(b, size - 1) };
    }
    if (r && !first) first = r;
  }
  return first ? { kind: 'range', ...first } : { kind: 'unsatisfiable' };
}

/** The entity tags of an `If-Match` / `If-None-Match` list (`*` kept as is). */
export function parseETagList(header: string): string[] {
  return header.match(/\*|(?:W\/)?"[^"]*"/g) ?? [];
}

const opaque = (tag: string) => (tag.startsWith('W/') ? tag.slice(2) : tag);

/** Weak comparison (If-None-Match): opaque tags equal, W/ ignored. */
export function weakMatch(list: string, etag: string): boolean {
  return parseETagList(list).some((t) => t === '*' || opaque(t) === opaque(etag));
}

/** Strong comparison (If-Match, If-Range): both tags strong and equal. */
export function strongMatch(list: string, etag: string): boolean {
  return parseETagList(list).some((t) => t === '*' || (!t.startsWith('W/') && t === etag));
}

/** An HTTP-date in seconds since the epoch, or null when it is not a date. */
export function parseHttpDate(s: string): number | null {
  const ms = Date.parse(s);
  return Number.isFinite(ms) ? Math.floor(ms / 1000) : null;
}

export type Precondition = 'ok' | 'not-modified' | 'failed';

/**
 * Evaluates the conditional headers of a GET/HEAD in the order RFC 9110 §13.2.2 gives:
 * If-Match, If-Unmodified-Since, If-None-Match, If-Modified-Since.
 */
export function evaluatePreconditions(
  h: { ifMatch?: string; ifUnmodifiedSince?: string; ifNoneMatch?: string; ifModifiedSince?: string },
  etag: string,
  mtimeSec: number,
): Precondition {
  if (h.ifMatch !== undefined) {
    if (!strongMatch(h.ifMatch, etag)) return 'failed';
  } else if (h.ifUnmodifiedSince !== undefined) {
    const d = parseHttpDate(h.ifUnmodifiedSince);
    if (d !== null && mtimeSec > d) return 'failed';
  }
  if (h.ifNoneMatch !== undefined) {
    if (weakMatch(h.ifNoneMatch, etag)) return 'not-modified';
  } else if (h.ifModifiedSince !== undefined) {
    const d = parseHttpDate(h.ifModifiedSince);
    if (d !== null && mtimeSec <= d) return 'not-modified';
  }
  return 'ok';
}

/**
 * `If-Range`: the Range applies only if the validator still matches — an entity tag compared
 * strongly, or a date equal to Last-Modified (files never change, so the date is strong).
 */
export function ifRangeAllows(ifRange: string | undefined, etag: string, mtimeSec: number): boolean {
  if (ifRange === undefined) return true;
  const v = ifRange.trim();
  if (v.startsWith('"') || v.startsWith('W/')) return !v.startsWith('W/') && v === etag;
  const d = parseHttpDate(v);
  return d !== null && d === mtimeSec;
}
