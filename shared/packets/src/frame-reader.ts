import { Errno, HEADER_LENGTH } from './constants.ts';
import { ProtocolError } from './errors.ts';
import { lengthError, type SpecFn } from './frame-spec.ts';
import { decodeHeader, type Header } from './header.ts';

export type FrameEvent =
  /** A whole buffered frame. */
  | { type: 'frame'; header: Header; body: Uint8Array }
  /** The start of a streamed frame: its fixed prefix; `rest` bytes of `data` follow, then `end`. */
  | { type: 'head'; header: Header; prefix: Uint8Array; rest: number }
  | { type: 'data'; chunk: Uint8Array }
  | { type: 'end' }
  /** The stream cannot continue; the reader is dead and the connection should close. */
  | { type: 'error'; header: Header | null; error: ProtocolError };

type State = 'header' | 'body' | 'prefix' | 'stream' | 'dead';

/**
 * Turns chunks of any size into frames. A declared length is checked against the spec *before*
 * anything is allocated for it. Streamed bodies are passed on as sub-views of the input chunks
 * (no copies). Pure: no I/O, works on Uint8Array in Node and in Workers.
 */
export class FrameReader {
  #spec: SpecFn;
  #state: State = 'header';
  #head = new Uint8Array(HEADER_LENGTH);
  #headFill = 0;
  #header: Header | null = null;
  #buf: Uint8Array = new Uint8Array(0);
  #fill = 0;
  #rest = 0;

  constructor(spec: SpecFn) {
    this.#spec = spec;
  }

  /** Changes the rules for the next frame (clients set the expected reply before each request). */
  setSpec(spec: SpecFn): void {
    this.#spec = spec;
  }

  /** True when no frame is partly read: a connection closing now lost nothing. */
  get idle(): boolean {
    return this.#state === 'header' && this.#headFill === 0;
  }

  get dead(): boolean {
    return this.#state === 'dead';
  }

  push(chunk: Uint8Array): FrameEvent[] {
    const out: FrameEvent[] = [];
    let i = 0;
    while (i < chunk.length && this.#state !== 'dead') {
      switch (this.#state) {
        case 'header': {
          const n = Math.min(HEADER_LENGTH - this.#headFill, chunk.length - i);
          this.#head.set(chunk.subarray(i, i + n), this.#headFill);
          this.#headFill += n;
          i += n;
          if (this.#headFill === HEADER_LENGTH) this.#startFrame(out);
          break;
        }
        case 'body':
        case 'prefix': {
          const n = Math.min(this.#buf.length - this.#fill, chunk.length - i);
          this.#buf.set(chunk.subarray(i, i + n), this.#fill);
          this.#fill += n;
          i += n;
          if (this.#fill === this.#buf.length) this.#bufferFull(out);
          break;
        }
        case 'stream': {
          const n = Math.min(this.#rest, chunk.length - i);
          out.push({ type: 'data', chunk: chunk.subarray(i, i + n) });
          this.#rest -= n;
          i += n;
          if (this.#rest === 0) this.#endStream(out);
          break;
        }
      }
    }
    return out;
  }

  #startFrame(out: FrameEvent[]): void {
    const header = decodeHeader(this.#head);
    this.#headFill = 0;
    this.#header = header;
    // As the seed: a negative length is refused before the command is even looked at.
    if (header.bodyLength < 0) {
      const raw = new DataView(this.#head.buffer).getBigInt64(0); // exact, even below −2^53
      this.#fail(out, header, new ProtocolError(`Invalid Body Length: ${raw} < 0`, Errno.BAD_LENGTH));
      return;
    }
    const spec = this.#spec(header);
    if (!('kind' in spec)) {
      this.#fail(out, header, spec);
      return;
    }
    const err = lengthError(header.bodyLength, spec);
    if (err) {
      this.#fail(out, header, err);
      return;
    }
    if (spec.kind === 'buffered') {
      this.#buf = new Uint8Array(header.bodyLength);
      this.#fill = 0;
      this.#state = 'body';
      if (header.bodyLength === 0) this.#bufferFull(out);
    } else {
      this.#buf = new Uint8Array(spec.prefix);
      this.#fill = 0;
      this.#rest = header.bodyLength - spec.prefix;
      this.#state = 'prefix';
      if (spec.prefix === 0) this.#bufferFull(out);
    }
  }

  #bufferFull(out: FrameEvent[]): void {
    const header = this.#header as Header;
    if (this.#state === 'body') {
      out.push({ type: 'frame', header, body: this.#buf });
      this.#reset();
      return;
    }
    out.push({ type: 'head', header, prefix: this.#buf, rest: this.#rest });
    this.#state = 'stream';
    if (this.#rest === 0) this.#endStream(out);
  }

  #endStream(out: FrameEvent[]): void {
    out.push({ type: 'end' });
    this.#reset();
  }

  #reset(): void {
    this.#state = 'header';
    this.#header = null;
    this.#buf = new Uint8Array(0);
    this.#fill = 0;
    this.#rest = 0;
  }

  #fail(out: FrameEvent[], header: Header, error: ProtocolError): void {
    this.#state = 'dead';
    out.push({ type: 'error', header, error });
  }
}
