import { ErrorCode } from '@dsm/common/errors';
import { fromUtf8, utf8 } from './encoding.ts';
import { GatewayErrorCode, HttpError, tooLarge } from './problem.ts';

/**
 * A streaming `multipart/form-data` reader (RFC 7578): parts come one after another and a
 * part's body is an async iterable that yields bytes as they arrive, so a file part goes to the
 * storage without being held in memory. Only the bytes that might be the start of the next
 * delimiter are kept back.
 */
export interface Part {
  name: string;
  filename: string | undefined;
  contentType: string | undefined;
  /** Lower-cased names; a null-prototype object, so `constructor` or `__proto__` are plain keys. */
  headers: Record<string, string>;
  /** Must be consumed (or `skip`ped) before the next part is asked for. */
  body: AsyncIterable<Uint8Array>;
}

const CRLF = utf8('\r\n');
const HEADER_END = utf8('\r\n\r\n');

/** Bounds of one body; every buffer the reader keeps is bounded by one of them or by a chunk. */
export interface MultipartLimits {
  /** Bytes of one part's header block (past it: 413). */
  maxPartHeaderBytes: number;
  /** Parts in the body (past it: 413). */
  maxParts: number;
}

export const DEFAULT_MULTIPART_LIMITS: MultipartLimits = { maxPartHeaderBytes: 4 * 1024, maxParts: 32 };

export function boundaryOf(contentType: string): string | null {
  const m = /;\s*boundary=(?:"([^"]{1,70})"|([^\s;]{1,70}))/i.exec(contentType);
  return m ? ((m[1] ?? m[2]) as string) : null;
}

function indexOf(hay: Uint8Array, needle: Uint8Array, from = 0): number {
  const first = needle[0] as number;
  const last = hay.length - needle.length;
  for (let i = hay.indexOf(first, from); i >= 0 && i <= last; i = hay.indexOf(first, i + 1)) {
    let j = 1;
    while (j < needle.length && hay[i + j] === needle[j]) j++;
    if (j === needle.length) return i;
  }
  return -1;
}

// HttpErrors: the gateway's own words, so the problem keeps them as its detail.
const incomplete = (what: string) =>
  new HttpError(400, GatewayErrorCode.BODY_INCOMPLETE, `multipart body ${what}`);
const malformed = (what: string) =>
  new HttpError(400, ErrorCode.BAD_INPUT, `malformed multipart body: ${what}`);

export class MultipartReader {
  readonly #it: AsyncIterator<Uint8Array>;
  /** `\r\n--boundary`: what ends a part's body. */
  readonly #delim: Uint8Array;
  #buf: Uint8Array = new Uint8Array(0);
  #eof = false;
  #started = false;
  #finished = false;
  #partOpen = false;
  #parts = 0;
  readonly #limits: MultipartLimits;

  constructor(
    source: AsyncIterable<Uint8Array>,
    boundary: string,
    limits: MultipartLimits = DEFAULT_MULTIPART_LIMITS,
  ) {
    this.#it = source[Symbol.asyncIterator]();
    this.#delim = utf8(`\r\n--${boundary}`);
    this.#limits = limits;
  }

  async #fill(): Promise<boolean> {
    if (this.#eof) return false;
    const r = await this.#it.next();
    if (r.done) {
      this.#eof = true;
      return false;
    }
    if (this.#buf.length === 0) this.#buf = r.value;
    else {
      const b = new Uint8Array(this.#buf.length + r.value.length);
      b.set(this.#buf, 0);
      b.set(r.value, this.#buf.length);
      this.#buf = b;
    }
    return true;
  }

  /** After a delimiter: `--` ends the body, otherwise (whitespace) CRLF starts a part. */
  async #afterDelimiter(): Promise<boolean> {
    while (this.#buf.length < 2) if (!(await this.#fill())) throw incomplete('ended after a delimiter');
    if (this.#buf[0] === 0x2d && this.#buf[1] === 0x2d) {
      this.#finished = true;
      return false;
    }
    for (;;) {
      const i = indexOf(this.#buf, CRLF);
      if (i >= 0) {
        if (!/^[ \t]*$/.test(String.fromCharCode(...this.#buf.subarray(0, i))))
          throw malformed('text after a delimiter');
        this.#buf = this.#buf.subarray(i + 2);
        return true;
      }
      if (this.#buf.length > 256) throw malformed('text after a delimiter');
      if (!(await this.#fill())) throw incomplete('ended after a delimiter');
    }
  }

  /** The next part, or null after the closing delimiter. */
  async next(): Promise<Part | null> {
    if (this.#partOpen) throw new Error('multipart: the previous part was not consumed');
    if (this.#finished) return null;
    if (!this.#started) {
      this.#started = true;
      // The first delimiter may come without the leading CRLF (no preamble).
      const dashB = this.#delim.subarray(2);
      for (;;) {
        if (indexOf(this.#buf, dashB) === 0) {
          this.#buf = this.#buf.subarray(dashB.length);
          break;
        }
        const at = indexOf(this.#buf, this.#delim);
        if (at >= 0) {
          this.#buf = this.#buf.subarray(at + this.#delim.length);
          break;
        }
        if (this.#buf.length > 64 * 1024) throw malformed('no opening delimiter');
        if (!(await this.#fill())) throw incomplete('has no opening delimiter');
      }
      if (!(await this.#afterDelimiter())) return null;
    }
    if (++this.#parts > this.#limits.maxParts)
      throw tooLarge(`the form has more than ${this.#limits.maxParts} parts`);
    // headers, up to an empty line
    let end: number;
    for (;;) {
      if (this.#buf.length >= 2 && this.#buf[0] === 0x0d && this.#buf[1] === 0x0a) {
        end = -2; // a part with no headers at all
        break;
      }
      end = indexOf(this.#buf, HEADER_END);
      if (end >= 0) break;
      if (this.#buf.length > this.#limits.maxPartHeaderBytes) {
        throw tooLarge(`a part's headers exceed ${this.#limits.maxPartHeaderBytes} bytes`);
      }
      if (!(await this.#fill())) throw incomplete('ended in part headers');
    }
    if (end > this.#limits.maxPartHeaderBytes) {
      throw tooLarge(`a part's headers exceed ${this.#limits.maxPartHeaderBytes} bytes`);
    }
    let headerText = '';
    try {
      headerText = end < 0 ? '' : fromUtf8(this.#buf.subarray(0, end));
    } catch {
      throw malformed('part headers are not UTF-8');
    }
    this.#buf = this.#buf.subarray(end < 0 ? 2 : end + 4);
    const headers: Record<string, string> = Object.create(null);
    for (const line of headerText.split('\r\n')) {
      if (!line) continue;
      const c = line.indexOf(':');
      if (c <= 0) throw malformed(`bad part header "${line.slice(0, 40)}"`);
      headers[line.slice(0, c).trim().toLowerCase()] = line.slice(c + 1).trim();
    }
    const disp = headers['content-disposition'] ?? '';
    if (!/^form-data\b/i.test(disp)) throw malformed('part without Content-Disposition: form-data');
    const name = param(disp, 'name') ?? '';
    const filename = param(disp, 'filename*') ?? param(disp, 'filename');
    this.#partOpen = true;
    return { name, filename, contentType: headers['content-type'], headers, body: this.#partBody() };
  }

  async *#partBody(): AsyncGenerator<Uint8Array> {
    const d = this.#delim;
    try {
      for (;;) {
        const i = indexOf(this.#buf, d);
        if (i >= 0) {
          const out = this.#buf.subarray(0, i);
          this.#buf = this.#buf.subarray(i + d.length);
          if (out.length) yield out;
          this.#partOpen = false;
          await this.#afterDelimiter();
          return;
        }
        // keep back what could be the start of the delimiter
        const safe = this.#buf.length - (d.length - 1);
        if (safe > 0) {
          const out = this.#buf.subarray(0, safe);
          this.#buf = this.#buf.subarray(safe);
          yield out;
        }
        if (!(await this.#fill())) throw incomplete('ended inside a part');
      }
    } finally {
      this.#partOpen = false;
    }
  }

  /** Reads a (small) part body whole. */
  static async text(part: Part, max = 64 * 1024): Promise<string> {
    const chunks: Uint8Array[] = [];
    let n = 0;
    for await (const c of part.body) {
      n += c.length;
      if (n > max) throw tooLarge(`form field "${part.name.slice(0, 40)}" is longer than ${max} bytes`);
      chunks.push(c);
    }
    const b = new Uint8Array(n);
    let o = 0;
    for (const c of chunks) {
      b.set(c, o);
      o += c.length;
    }
    try {
      return fromUtf8(b);
    } catch {
      throw malformed(`field "${part.name}" is not UTF-8`);
    }
  }

  async close(): Promise<void> {
    await this.#it.return?.();
  }
}

/** A parameter of a Content-Disposition value (quoted or token; `name*=UTF-8''…` decoded). */
function param(header: string, key: string): string | undefined {
  const esc = key.replace(/[*]/g, '\\*');
  const m = new RegExp(`;\\s*${esc}\\s*=\\s*(?:"((?:[^"\\\\]|\\\\.)*)"|([^;\\s]*))`, 'i').exec(header);
  if (!m) return undefined;
  if (m[1] !== undefined) return m[1].replace(/\\(.)/g, '$1');
  const v = m[2] as string;
  if (key.endsWith('*')) {
    const x = /^UTF-8''(.*)$/i.exec(v);
    if (!x) return undefined;
    try {
      return decodeURIComponent(x[1] as string);
    } catch {
      return undefined;
    }
  }
  return v;
}
