import { DsmError, ErrorCode } from '@dsm/common/errors';
import {
  decodeErrorReply,
  Errno,
  type FrameEvent,
  FrameReader,
  type FrameSpec,
  ProtocolError,
  replySpec,
  type SpecFn,
  Status,
} from '@dsm/packets';
import { RemoteError } from './connection.ts';
import { SilenceWatch } from './silence.ts';
import type { ByteSocket } from './transport.ts';

/**
 * Pipelined small requests on one kept connection (Pool.request; the gateway's small GETs).
 *
 * Why: on a small GET the gateway's own work is a few microseconds, while each protocol round
 * trip costs a write and a read on each side (on a loopback they carry the peer's TCP receive
 * path too). Measured on the 2-core AMD host with a bare pair of Node processes (4 KiB GETs,
 * wrk -c64): one request per connection cost 50-71 µs of the front's CPU and 22-25 µs of the
 * storage's per GET; the same requests written together once per event loop turn on one
 * connection (and the storage's replies to them written together: ProtocolServer corks while
 * more requests of the connection are parsed) cost 39-44 and 8-9 µs.
 *
 * The rules: a server answers the requests of one connection one after another, in order (the
 * seed's rule, kept by ProtocolServer), so the n-th reply frame is the n-th request's. Requests
 * made during one turn of the event loop go out in one write when the turn ends (setImmediate).
 * After an error reply the server closes the connection (seed rule): the requests behind it were
 * never handled, and fail with `Unanswered`, which the pool resends on a connection of its own
 * (only idempotent reads are pipelined: small downloads, whose handler reads at once; not a
 * stat, which may hash a whole file the seed stored without a checksum and would hold every
 * request behind it that long). Bounds: `depth` requests at most in flight per pipe
 * (each reply at most `maxReplyBytes`, so a pipe holds at most depth × maxReplyBytes), `ioTimeoutMs` of
 * silence while requests are in flight tears the pipe down and fails them all with TIMEOUT.
 */
export interface PipelineOptions {
  /** Pipes per server address. */
  pipes: number;
  /** Requests in flight per pipe; a request that finds every pipe this deep takes the pool's way. */
  depth: number;
  /** Only replies up to this size are pipelined. */
  maxReplyBytes: number;
}

/** A pipelined request that the server never answered (the connection ended first): safe to resend. */
export class Unanswered extends DsmError {
  constructor(message: string) {
    super(ErrorCode.SOCKET, message);
    this.name = 'Unanswered';
  }
}

interface Entry {
  /** When the request was queued (Date.now()). */
  at: number;
  spec: SpecFn;
  resolve: (b: Uint8Array) => void;
  reject: (e: unknown) => void;
}

const schedule: (fn: () => void) => void =
  typeof setImmediate === 'function' ? (fn) => setImmediate(fn) : (fn) => queueMicrotask(fn);

export class Pipe {
  readonly address: string;
  readonly #sock: ByteSocket;
  readonly #entries: Entry[] = [];
  /** Reply frames whose header was read (their spec taken) but not yet handed out. */
  #specAt = 0;
  readonly #reader: FrameReader;
  #out: Uint8Array[] = [];
  #outBytes = 0;
  #flushing = false;
  #dead = false;
  /** ioTimeoutMs of silence while requests wait ends the pipe (silence.ts). */
  readonly #silence: SilenceWatch;
  lastUsed = Date.now();

  constructor(sock: ByteSocket, address: string, ioTimeoutMs: number) {
    this.#sock = sock;
    this.address = address;
    this.#reader = new FrameReader(this.#specOf);
    this.#silence = new SilenceWatch(
      ioTimeoutMs,
      () => !this.#dead && this.#entries.length > 0,
      () => {
        this.#fail(new DsmError(ErrorCode.TIMEOUT, `no reply from ${address} within ${ioTimeoutMs} ms`));
        this.#sock.destroy();
      },
    );
    void this.#readLoop();
  }

  /** Requests sent and not yet answered. */
  get depth(): number {
    return this.#entries.length;
  }

  get usable(): boolean {
    return !this.#dead && !this.#sock.closed;
  }

  /** Since when the oldest unanswered request waits (Date.now() ms), or null when none waits. */
  get waitingSince(): number | null {
    return this.#entries[0]?.at ?? null;
  }

  /**
   * Queues `frame` (one request, with its request context frame in front when there is one);
   * its reply follows `replyCommand` and `ok` (an error reply rejects with RemoteError).
   */
  request(frame: Uint8Array, replyCommand: number, ok: FrameSpec): Promise<Uint8Array> {
    if (!this.usable) return Promise.reject(new Unanswered(`pipe to ${this.address} is closed`));
    return new Promise<Uint8Array>((resolve, reject) => {
      const now = Date.now();
      if (this.#entries.length === 0) this.#silence.stamp(now);
      this.#entries.push({ at: now, spec: replySpec(replyCommand, ok), resolve, reject });
      this.#out.push(frame);
      this.#outBytes += frame.length;
      this.lastUsed = now;
      this.#silence.watch();
      if (!this.#flushing) {
        this.#flushing = true;
        schedule(this.#flush);
      }
    });
  }

  /** Ends the pipe; requests in flight fail as unanswered. */
  close(): void {
    this.#fail(new Unanswered(`pipe to ${this.address} closed`));
    this.#sock.close();
  }

  readonly #flush = (): void => {
    this.#flushing = false;
    if (this.#dead || this.#out.length === 0) return;
    let bytes: Uint8Array;
    if (this.#out.length === 1) bytes = this.#out[0] as Uint8Array;
    else {
      bytes = new Uint8Array(this.#outBytes);
      let at = 0;
      for (const f of this.#out) {
        bytes.set(f, at);
        at += f.length;
      }
    }
    this.#out = [];
    this.#outBytes = 0;
    this.#sock.write(bytes).catch((e: unknown) => {
      this.#fail(new Unanswered(`write to ${this.address} failed: ${(e as Error).message}`));
      this.#sock.destroy();
    });
  };

  /** The rules of the next reply frame: its request's. */
  readonly #specOf = (h: Parameters<SpecFn>[0]): FrameSpec | ProtocolError => {
    const e = this.#entries[this.#specAt];
    if (!e) return new ProtocolError('Unexpected Reply: no request is waiting for it', Errno.BAD_FIELD);
    this.#specAt++;
    return e.spec(h);
  };

  async #readLoop(): Promise<void> {
    for (;;) {
      let chunk: Uint8Array | null;
      try {
        chunk = await this.#sock.read();
      } catch (e) {
        this.#fail(new Unanswered(`connection to ${this.address} failed: ${(e as Error).message}`));
        return;
      }
      if (chunk === null) {
        this.#fail(new Unanswered(`connection to ${this.address} closed by the server`));
        return;
      }
      if (this.#dead) return;
      this.#silence.stamp();
      try {
        for (const ev of this.#reader.push(chunk)) this.#deliver(ev);
      } catch (e) {
        // nothing above throws on any input; if it ever did, the pipe ends, not the process
        this.#fail(
          new DsmError(ErrorCode.PROTOCOL, `pipe to ${this.address} failed: ${(e as Error).message}`),
        );
        this.#sock.destroy();
      }
      if (this.#dead) return;
    }
  }

  #deliver(ev: FrameEvent): void {
    if (this.#dead) return;
    if (ev.type !== 'frame') {
      // a broken frame (or one this pipe cannot take): the oldest request gets the failure
      const message = ev.type === 'error' ? ev.error.message : `unexpected reply event ${ev.type}`;
      const first = this.#entries.shift();
      this.#specAt = 0;
      this.#fail(new Unanswered(`pipe to ${this.address} broke`));
      this.#sock.destroy();
      first?.reject(new DsmError(ErrorCode.PROTOCOL, `bad reply from ${this.address}: ${message}`));
      return;
    }
    const e = this.#entries.shift() as Entry;
    this.#specAt--;
    if (ev.header.status === Status.OK) {
      e.resolve(ev.body);
      return;
    }
    // the server closes after an error reply: the requests behind this one were never handled
    let failure: DsmError;
    try {
      const err = decodeErrorReply(ev.body);
      failure = new RemoteError(err.errno, err.message);
    } catch (x) {
      failure = new DsmError(
        ErrorCode.PROTOCOL,
        `bad error reply from ${this.address}: ${(x as Error).message}`,
      );
    }
    this.#fail(new Unanswered(`${this.address} closed the pipe after an error reply`));
    this.#sock.close();
    e.reject(failure);
  }

  #fail(e: DsmError): void {
    if (this.#dead) return;
    this.#dead = true;
    this.#silence.stop();
    this.#out = [];
    this.#outBytes = 0;
    const entries = this.#entries.splice(0);
    this.#specAt = 0;
    for (const x of entries) x.reject(e);
  }
}
