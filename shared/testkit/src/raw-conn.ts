/** A bare TCP connection that reads whole frames, for byte-level protocol tests. */
import { connect, type Socket } from 'node:net';
import {
  decodeErrorReply,
  decodeHeader,
  encodeFrame,
  HEADER_LENGTH,
  type Header,
  Status,
} from '@dsm/packets';

export interface RawFrame {
  header: Header;
  /** The body bytes. */
  body: Buffer;
  /** The whole frame as received (header + body). */
  frame: Buffer;
  /** Error replies (status ≠ OK, with an error-reply body): errno and description. */
  errno?: number;
  message?: string;
}

export interface RawConnOptions {
  host?: string;
  localAddress?: string;
  noDelay?: boolean;
}

export class RawConn {
  readonly socket: Socket;
  /** Resolves when the server ended or closed the connection (or it failed). */
  readonly closed: Promise<void>;
  #buf: Buffer = Buffer.alloc(0);
  #closed = false;
  readonly #waiters = new Set<() => void>();

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (c: Buffer) => {
      this.#buf = this.#buf.length === 0 ? c : Buffer.concat([this.#buf, c]);
      this.#notify();
    });
    this.closed = new Promise((resolve) => {
      const end = () => {
        this.#closed = true;
        this.#notify();
        resolve();
      };
      socket.on('end', end);
      socket.on('close', end);
      socket.on('error', end); // ECONNRESET after an early error reply is expected
    });
  }

  static open(port: number, opts: RawConnOptions = {}): Promise<RawConn> {
    return new Promise((resolve, reject) => {
      const s = connect({ port, host: opts.host ?? '127.0.0.1', localAddress: opts.localAddress });
      if (opts.noDelay) s.setNoDelay(true);
      s.once('error', reject);
      s.once('connect', () => {
        s.off('error', reject);
        resolve(new RawConn(s));
      });
    });
  }

  get isClosed(): boolean {
    return this.#closed;
  }

  /** Bytes received and not yet read as a frame. */
  get pending(): Buffer {
    return this.#buf;
  }

  #notify(): void {
    const all = [...this.#waiters];
    this.#waiters.clear();
    for (const w of all) w();
  }

  /** Waits for more data, the close, or `ms`. */
  #wait(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(t);
        this.#waiters.delete(wake);
        resolve();
      };
      const t = setTimeout(wake, ms);
      this.#waiters.add(wake);
    });
  }

  send(bytes: Uint8Array): void {
    this.socket.write(bytes);
  }

  /** Writes and waits until the bytes are handed to the OS. */
  write(bytes: Uint8Array): Promise<void> {
    return new Promise((resolve, reject) => this.socket.write(bytes, (e) => (e ? reject(e) : resolve())));
  }

  #frameLength(): number | null {
    if (this.#buf.length < HEADER_LENGTH) return null;
    const { bodyLength } = decodeHeader(this.#buf);
    if (!Number.isSafeInteger(bodyLength) || bodyLength < 0) {
      throw new Error(`bad frame from the server: body length ${bodyLength}`);
    }
    const n = HEADER_LENGTH + bodyLength;
    return this.#buf.length >= n ? n : null;
  }

  /** The next whole frame, or null when the connection closed or nothing came within `timeoutMs`. */
  async readFrame(timeoutMs = 5000): Promise<RawFrame | null> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const n = this.#frameLength();
      if (n !== null) {
        const frame = this.#buf.subarray(0, n);
        this.#buf = this.#buf.subarray(n);
        const r: RawFrame = { header: decodeHeader(frame), body: frame.subarray(HEADER_LENGTH), frame };
        if (r.header.status !== Status.OK) {
          try {
            Object.assign(r, decodeErrorReply(r.body));
          } catch {
            // not an error-reply body: left to the test to look at
          }
        }
        return r;
      }
      const left = deadline - Date.now();
      if (this.#closed || left <= 0) return null;
      await this.#wait(left);
    }
  }

  /** The next whole frame; throws when the connection closed first or nothing came in time. */
  async next(timeoutMs = 5000): Promise<RawFrame> {
    const f = await this.readFrame(timeoutMs);
    if (f) return f;
    throw new Error(this.#closed ? 'connection closed without a reply' : 'no reply in time');
  }

  /** Sends one frame and reads the reply. */
  request(command: number, body: Uint8Array = new Uint8Array(0)): Promise<RawFrame> {
    this.send(encodeFrame(command, body));
    return this.next();
  }

  /** Resolves true when the server closed the connection within `ms`. */
  async closedWithin(ms = 2000): Promise<boolean> {
    if (this.#closed) return true;
    let timer: NodeJS.Timeout | undefined;
    const r = await Promise.race([
      this.closed.then(() => true),
      new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(false), ms);
      }),
    ]);
    clearTimeout(timer);
    return r;
  }

  /** Waits up to `timeoutMs` for the close; `extra` = bytes that came after the last frame read. */
  async waitClosed(timeoutMs = 3000): Promise<{ closed: boolean; extra: number }> {
    const closed = await this.closedWithin(timeoutMs);
    return { closed, extra: this.#buf.length };
  }

  close(): void {
    this.socket.destroy();
  }
}
