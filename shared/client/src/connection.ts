import { codeForErrno, DsmError, ErrorCode } from '@dsm/common/errors';
import {
  AUTH_CLIENT_LABEL,
  AUTH_NONCE_LENGTH,
  AUTH_PROOF_LENGTH,
  AUTH_SERVER_LABEL,
  authReplySpec,
  authTranscript,
  Command,
  decodeAuthChallengeReply,
  decodeAuthProveReply,
  decodeErrorReply,
  encodeAuthProve,
  encodeFrame,
  encodeHeader,
  encodeRequestContext,
  exactly,
  type FrameEvent,
  FrameReader,
  type FrameSpec,
  HEADER_LENGTH,
  type Header,
  isRequestId,
  replySpec,
  Status,
  sameBytes,
  streamed,
} from '@dsm/packets';
import { type ClusterKey, hmacSha256 } from './cluster-key.ts';
import { SilenceWatch } from './silence.ts';
import type { ByteSocket } from './transport.ts';

/** A streamed request whose body is at most this big sends its header with the body's first chunk. */
const COALESCED_BODY_BYTES = 64 * 1024;

/** An error reply from a server: `errno` and the server's description. */
export class RemoteError extends DsmError {
  readonly remote = true;
  constructor(errno: number, message: string) {
    super(codeForErrno(errno), message, errno);
    this.name = 'RemoteError';
  }
}

/** An error reply from a server (a RemoteError), and with errnos only one of those. */
export function isRemoteError(e: unknown, ...errnos: number[]): e is RemoteError {
  return e instanceof RemoteError && (errnos.length === 0 || errnos.includes(e.errno));
}

export interface ConnectionOptions {
  /** Longest wait for the next bytes of a reply. */
  ioTimeoutMs: number;
}

export interface StreamReply {
  header: Header;
  length: number;
  /** The reply body; must be consumed to the end before the connection is reused. */
  stream: AsyncIterable<Uint8Array>;
}

/**
 * One protocol connection: request → reply, one at a time. After an error reply the server
 * closes the connection, so `usable` turns false; a pool drops unusable connections.
 */
export class Connection {
  readonly address: string;
  readonly #sock: ByteSocket;
  readonly #opts: ConnectionOptions;
  readonly #reader = new FrameReader(() => ({ kind: 'buffered', min: 0, max: 0 }));
  #events: FrameEvent[] = [];
  #usable = true;
  #busy = false;
  /** A read is waiting for the server (the silence watch only counts silence then). */
  #reading = false;
  #timedOut = false;
  /** The reply timeout: ioTimeoutMs of silence while a read waits tears the socket down. */
  readonly #silence: SilenceWatch;
  lastUsed = Date.now();
  /** The REQUEST_CONTEXT frame sent before each request while a request id is set. */
  #context: Uint8Array | null = null;
  #requestId: string | undefined;

  constructor(sock: ByteSocket, address: string, opts: ConnectionOptions) {
    this.#sock = sock;
    this.address = address;
    this.#opts = opts;
    this.#silence = new SilenceWatch(
      opts.ioTimeoutMs,
      () => this.#reading && this.#usable && !this.#sock.closed,
      () => {
        this.#timedOut = true;
        this.destroy();
      },
    );
  }

  /**
   * The request id every request on this connection names (REQUEST_CONTEXT, @dsm/packets
   * messages/context.ts) until it is set again: the node logs it as `rid`. The pool sets it for
   * the length of one `use` (Pool.use). Something that is not a request id is not sent.
   */
  get requestId(): string | undefined {
    return this.#requestId;
  }

  set requestId(id: string | undefined) {
    if (id === this.#requestId) return;
    this.#requestId = id;
    this.#context = contextFrame(id);
  }

  /** `frame`, after the request context frame when there is one (one write either way). */
  #withContext(frame: Uint8Array): Uint8Array {
    return prefixed(this.#context, frame);
  }

  get usable(): boolean {
    return this.#usable && !this.#sock.closed;
  }

  close(): void {
    this.#usable = false;
    this.#clearIdle();
    this.#sock.close();
  }

  destroy(): void {
    this.#usable = false;
    this.#clearIdle();
    this.#sock.destroy();
  }

  /**
   * Hands the socket over (to a Pipe, after `authenticate`): nothing may be read ahead or in
   * flight. This connection is done with it.
   */
  detach(): ByteSocket {
    if (this.#busy || this.#events.length > 0 || !this.#reader.idle || !this.usable) {
      throw new DsmError(ErrorCode.SOCKET, `connection to ${this.address} cannot be handed over now`);
    }
    this.#usable = false;
    this.#clearIdle();
    return this.#sock;
  }

  #clearIdle(): void {
    this.#silence.stop();
  }

  /**
   * Proves that this side holds `key` and checks that the server holds it too (AUTH_CHALLENGE,
   * AUTH_PROVE; @dsm/packets messages/auth.ts). A server that refuses answers an error reply
   * (RemoteError, code DSM_ERR_UNAUTHORIZED); a server that cannot prove the key back fails
   * with DSM_ERR_UNAUTHORIZED too. Either way the connection is closed.
   */
  async authenticate(key: ClusterKey): Promise<void> {
    await this.#exclusive(async () => {
      this.#reader.setSpec(authReplySpec(exactly(AUTH_NONCE_LENGTH)));
      await this.#sock.write(encodeFrame(Command.AUTH_CHALLENGE, new Uint8Array(0)));
      const serverNonce = decodeAuthChallengeReply(await this.#readBuffered());
      const clientNonce = crypto.getRandomValues(new Uint8Array(AUTH_NONCE_LENGTH));
      const proof = await hmacSha256(
        key,
        authTranscript(AUTH_CLIENT_LABEL, serverNonce, clientNonce, key.id),
      );
      this.#reader.setSpec(authReplySpec(exactly(AUTH_PROOF_LENGTH)));
      await this.#sock.write(
        encodeFrame(Command.AUTH_PROVE, encodeAuthProve({ keyId: key.id, clientNonce, proof })),
      );
      const serverProof = decodeAuthProveReply(await this.#readBuffered());
      const want = await hmacSha256(key, authTranscript(AUTH_SERVER_LABEL, serverNonce, clientNonce, key.id));
      if (!sameBytes(want, serverProof)) {
        throw new DsmError(
          ErrorCode.UNAUTHORIZED,
          `${this.address} could not prove that it holds cluster key "${key.id}"; not talking to it`,
        );
      }
    });
  }

  /**
   * Sends a small request and reads a buffered reply (`ok` bounds the success body). Settled
   * from the socket's reads by this connection's own callbacks: one promise per request, not a
   * chain of async functions (`#exclusive` → `#readBuffered` → `#nextEvent` →
   * `#readWithTimeout`: a promise and a resumption each, most of what a gateway allocated per
   * small GET besides Node's own HTTP objects). Same frame rules, I/O timeout and failure
   * handling as the streamed requests below.
   */
  request(command: number, body: Uint8Array, replyCommand: number, ok: FrameSpec): Promise<Uint8Array> {
    if (this.#busy) return Promise.reject(new DsmError(ErrorCode.SOCKET, 'connection is busy'));
    this.#busy = true;
    this.#reader.setSpec(replySpec(replyCommand, ok));
    return new Promise<Uint8Array>((resolve, reject) => {
      this.#pending = { resolve, reject };
      this.#sock
        .write(this.#withContext(encodeFrame(command, body)))
        .then(this.#pendingDeliver, this.#pendingFail);
    });
  }

  /** The pending request's settlers. */
  #pending: { resolve: (b: Uint8Array) => void; reject: (e: unknown) => void } | null = null;

  readonly #pendingFail = (e: unknown): void => {
    const q = this.#pending;
    this.#pending = null;
    this.#busy = false;
    this.#reading = false;
    this.#usable = false;
    if (!(e instanceof RemoteError)) this.destroy();
    q?.reject(e);
  };

  /** The next reply event, or a read for more bytes. */
  readonly #pendingDeliver = (): void => {
    const ev = this.#events.shift();
    if (!ev) {
      this.#startRead().then(this.#pendingChunk, this.#pendingReadFailed);
      return;
    }
    let body: Uint8Array;
    try {
      body = this.#replyBody(this.#checked(ev));
    } catch (e) {
      this.#pendingFail(e);
      return;
    }
    const q = this.#pending;
    this.#pending = null;
    this.#busy = false;
    this.lastUsed = Date.now();
    q?.resolve(body);
  };

  readonly #pendingChunk = (chunk: Uint8Array | null): void => {
    this.#reading = false;
    if (this.#timedOut) {
      this.#pendingFail(this.#timeoutError());
    } else if (chunk === null) {
      this.#pendingFail(this.#closedByServer());
    } else {
      this.#events = this.#reader.push(chunk);
      this.#pendingDeliver();
    }
  };

  readonly #pendingReadFailed = (e: unknown): void => {
    this.#reading = false;
    this.#pendingFail(this.#timedOut ? this.#timeoutError() : e);
  };

  /**
   * Sends `prefix` + `restLength` bytes from `source` as one frame (uploads), while watching for
   * an early error reply: a server that refuses an upload answers and closes before the body is
   * sent, and that answer is what the caller needs to see, not the broken pipe.
   */
  async requestStreamed(
    command: number,
    prefix: Uint8Array,
    restLength: number,
    source: AsyncIterable<Uint8Array>,
    replyCommand: number,
    ok: FrameSpec,
    onProgress?: (sent: number) => void,
  ): Promise<Uint8Array> {
    return this.#exclusive(async () => {
      this.#reader.setSpec(replySpec(replyCommand, ok));
      const reply = this.#readBuffered();
      reply.catch(() => {});
      const ctx = this.#context;
      const at = ctx?.length ?? 0;
      const first = new Uint8Array(at + HEADER_LENGTH + prefix.length);
      if (ctx) first.set(ctx, 0);
      encodeHeader({ bodyLength: prefix.length + restLength, command, status: Status.OK }, first, at);
      first.set(prefix, at + HEADER_LENGTH);
      let sent = 0;
      let replied = false;
      void reply.then(
        () => {
          replied = true;
        },
        () => {
          replied = true;
        },
      );
      try {
        // A small body's header waits for its first chunk and goes out with it, in one write
        // (a 4 KiB upload is one write here and one read on the storage, not two). A bigger
        // one's header goes at once: the storage prepares while the body comes.
        let head: Uint8Array | null = first;
        if (restLength > COALESCED_BODY_BYTES) {
          head = null;
          await this.#sock.write(first);
        }
        for await (const chunk of source) {
          if (replied) break;
          if (sent + chunk.length > restLength) {
            throw new DsmError(
              ErrorCode.BAD_INPUT,
              `upload source is longer than the declared ${restLength} bytes`,
            );
          }
          if (head) {
            // the whole body is at most COALESCED_BODY_BYTES, so this chunk is too
            const both = new Uint8Array(head.length + chunk.length);
            both.set(head, 0);
            both.set(chunk, head.length);
            head = null;
            await this.#sock.write(both);
          } else {
            await this.#sock.write(chunk);
          }
          // bytes flowing: the reply read below waits ioTimeoutMs of silence, not of upload
          this.#silence.stamp();
          sent += chunk.length;
          onProgress?.(sent);
        }
        if (head) await this.#sock.write(head); // an empty body
        if (!replied && sent !== restLength) {
          throw new DsmError(ErrorCode.BAD_INPUT, `upload source ended at ${sent} of ${restLength} bytes`);
        }
      } catch (e) {
        // If the server already answered (an error reply), report that answer.
        const answered = await Promise.race([
          reply.then(
            () => true,
            () => true,
          ),
          delay(200).then(() => false),
        ]);
        if (answered) await reply;
        this.destroy();
        throw e;
      }
      return reply;
    });
  }

  /** Sends a request whose success reply body is streamed back (downloads). */
  async requestStream(command: number, body: Uint8Array, replyCommand: number): Promise<StreamReply> {
    if (this.#busy) throw new DsmError(ErrorCode.SOCKET, 'connection is busy');
    this.#busy = true;
    try {
      this.#reader.setSpec(replySpec(replyCommand, streamed(0)));
      await this.#sock.write(this.#withContext(encodeFrame(command, body)));
      const ev = await this.#nextEvent();
      if (ev.type === 'frame') {
        this.#busy = false;
        this.#failOnError(ev.header, ev.body);
        throw new DsmError(ErrorCode.PROTOCOL, 'unexpected buffered reply');
      }
      if (ev.type !== 'head') throw new DsmError(ErrorCode.PROTOCOL, 'unexpected reply event');
      const length = ev.rest;
      let done = false;
      const self = this;
      const stream: AsyncIterable<Uint8Array> = {
        async *[Symbol.asyncIterator]() {
          try {
            while (!done) {
              const d = await self.#nextEvent();
              if (d.type === 'end') {
                done = true;
                return;
              }
              if (d.type !== 'data') throw new DsmError(ErrorCode.PROTOCOL, 'unexpected event in reply body');
              yield d.chunk;
            }
          } finally {
            // A consumer that stops early leaves unread bytes: the connection cannot be reused.
            if (!done) self.destroy();
            self.#busy = false;
          }
        },
      };
      return { header: ev.header, length, stream };
    } catch (e) {
      this.#busy = false;
      this.#usable = false;
      if (!(e instanceof RemoteError)) this.destroy();
      throw e;
    }
  }

  async #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#busy) throw new DsmError(ErrorCode.SOCKET, 'connection is busy');
    this.#busy = true;
    try {
      const r = await fn();
      this.lastUsed = Date.now();
      return r;
    } catch (e) {
      this.#usable = false;
      if (!(e instanceof RemoteError)) this.destroy();
      throw e;
    } finally {
      this.#busy = false;
    }
  }

  async #readBuffered(): Promise<Uint8Array> {
    return this.#replyBody(await this.#nextEvent());
  }

  /** The body of a buffered reply (a frame, not an error reply), or the failure it stands for. */
  #replyBody(ev: FrameEvent): Uint8Array {
    if (ev.type !== 'frame') throw new DsmError(ErrorCode.PROTOCOL, `unexpected reply event ${ev.type}`);
    this.#failOnError(ev.header, ev.body);
    return ev.body;
  }

  /** `ev` unless it is a broken frame (then the connection is destroyed and PROTOCOL thrown). */
  #checked(ev: FrameEvent): FrameEvent {
    if (ev.type === 'error') {
      this.destroy();
      throw new DsmError(ErrorCode.PROTOCOL, `bad reply from ${this.address}: ${ev.error.message}`);
    }
    return ev;
  }

  #closedByServer(): DsmError {
    this.#usable = false;
    return new DsmError(ErrorCode.SOCKET, `connection to ${this.address} closed by the server`);
  }

  #failOnError(header: Header, body: Uint8Array): void {
    if (header.status === Status.OK) return;
    this.#usable = false;
    const e = decodeErrorReply(body);
    // The server closes after an error reply; close our side too.
    this.#sock.close();
    throw new RemoteError(e.errno, e.message);
  }

  async #nextEvent(): Promise<FrameEvent> {
    for (;;) {
      const ev = this.#events.shift();
      if (ev) return this.#checked(ev);
      const chunk = await this.#readWithTimeout();
      if (chunk === null) throw this.#closedByServer();
      this.#events = this.#reader.push(chunk);
    }
  }

  /**
   * The next bytes from the server, or a TIMEOUT after `ioTimeoutMs` with nothing sent or
   * received: while a streamed upload's body still goes out (requestStreamed stamps the
   * silence watch), the wait for its reply goes on, however long the upload takes. The watch
   * (silence.ts) tears the socket down when a read has waited `ioTimeoutMs` since the last
   * activity, which wakes that read with null.
   */
  async #readWithTimeout(): Promise<Uint8Array | null> {
    try {
      const chunk = await this.#startRead();
      if (this.#timedOut) throw this.#timeoutError();
      return chunk;
    } catch (e) {
      throw this.#timedOut ? this.#timeoutError() : e;
    } finally {
      this.#reading = false;
    }
  }

  /** A read of the next bytes, watched for silence (`#reading` until the caller clears it). */
  #startRead(): Promise<Uint8Array | null> {
    this.#silence.stamp();
    this.#reading = true;
    this.#silence.watch();
    return this.#sock.read();
  }

  #timeoutError(): DsmError {
    return new DsmError(
      ErrorCode.TIMEOUT,
      `no reply from ${this.address} within ${this.#opts.ioTimeoutMs} ms`,
    );
  }
}

/** The REQUEST_CONTEXT frame naming `id`, or null when `id` is absent or not a request id. */
export function contextFrame(id: string | undefined): Uint8Array | null {
  return id !== undefined && isRequestId(id)
    ? encodeFrame(Command.REQUEST_CONTEXT, encodeRequestContext(id))
    : null;
}

/** `frame` after `head` (one buffer, for one write), or `frame` alone. */
export function prefixed(head: Uint8Array | null, frame: Uint8Array): Uint8Array {
  if (!head) return frame;
  const b = new Uint8Array(head.length + frame.length);
  b.set(head, 0);
  b.set(frame, head.length);
  return b;
}

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export { encodeHeader };
