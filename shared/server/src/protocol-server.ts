import { createHmac, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { type AddressInfo, createServer, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import { errnoOf, type Logger } from '@dsm/common';
import {
  AUTH_CLIENT_LABEL,
  AUTH_SERVER_LABEL,
  authTranscript,
  Command,
  decodeAuthProve,
  decodeRequestContext,
  Errno,
  encodeAuthChallengeReply,
  encodeAuthProveReply,
  encodeErrorReply,
  encodeFrame,
  encodeHeader,
  encodeStreamHeader,
  type FrameEvent,
  FrameReader,
  HEADER_LENGTH,
  type Header,
  requestSpecs,
  Status,
} from '@dsm/packets';
import { commandAccess } from './access.ts';
import type { ServerMetrics } from './metrics.ts';
import { addressAllowed, type NodeSecurity } from './security.ts';

export interface ConnectionInfo {
  id: string;
  remoteAddress: string;
  remotePort: number;
}

/** One request as a handler sees it. */
export interface RequestContext {
  header: Header;
  /** The whole body of a buffered request, or the fixed prefix of a streamed one. */
  body: Uint8Array;
  /** Bytes of a streamed body after the prefix; `body.length + rest` = declared length. */
  rest: number;
  /** The rest of a streamed body; must be consumed fully for the connection to continue. */
  stream: AsyncIterable<Uint8Array>;
  conn: ConnectionInfo;
  /**
   * The request id the client named for this request (REQUEST_CONTEXT, @dsm/packets
   * messages/context.ts), or undefined. `log` already carries it as `rid`.
   */
  requestId: string | undefined;
  log: Logger;
  /** Success reply with this server's reply command. */
  reply(body?: Uint8Array): Promise<void>;
  /**
   * Success reply from a buffer that holds HEADER_LENGTH bytes of room and then the body: the
   * header is written into the room and the buffer goes out as it is (no copy of the body, as
   * `reply` makes; small downloads read straight into such a buffer).
   */
  replyFramed(frame: Uint8Array<ArrayBuffer>): Promise<void>;
  /**
   * Success reply whose body (exactly `length` bytes) comes from `source`, with backpressure.
   * Each chunk has been handed to the OS before the next one is asked for, so a source may
   * read the next chunk into the same buffer.
   */
  replyStream(length: number, source: AsyncIterable<Uint8Array>): Promise<void>;
}

export type Handler = (ctx: RequestContext) => Promise<void>;

export interface ProtocolServerOptions {
  name: string;
  /** Prefix of error descriptions: `[hostname] message`, as the seed does. */
  hostname: string;
  replyCommand: number;
  handlers: Readonly<Record<number, Handler>>;
  log: Logger;
  /** Largest streamed body after its prefix (uploads). */
  maxUpload?: number;
  /** Close a connection idle this long between requests (0 = never). */
  idleTimeoutMs?: number;
  /** Called once per connection after it closed and its last request finished. */
  onConnectionClose?: (conn: ConnectionInfo) => void;
  /** Node-protocol security: allowFrom, auth (the handshake is served here), TLS. Absent = open TCP. */
  security?: ServerSecurity;
  /** Requests, bytes, connections and refusals are reported here (metrics.ts). */
  metrics?: ServerMetrics;
}

export type ServerSecurity = Pick<
  NodeSecurity,
  'required' | 'reads' | 'timeoutMs' | 'keys' | 'allow' | 'tlsServer'
>;

/** Per-connection handshake state. */
interface AuthState {
  nonce: Uint8Array | null;
  keyId: string | null;
}

/** A TLS handshake that has not finished in this time is dropped. */
const TLS_HANDSHAKE_TIMEOUT_MS = 10_000;
/** HMAC key used for an unknown key id, so that a wrong id costs the same as a wrong secret. */
const DUMMY_KEY = randomBytes(32);

class ReplyStarted extends Error {}

/**
 * A TCP server for one dsm node. Each connection handles its requests one after another (as
 * the seed's worker threads do); connections stay open after a success and close after an
 * error reply. A malformed frame gets an error reply and closes that connection only.
 */
export class ProtocolServer {
  readonly #opts: ProtocolServerOptions;
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  #inFlight = 0;
  #closing = false;

  constructor(opts: ProtocolServerOptions) {
    this.#opts = opts;
    const serve = (s: Socket) => {
      this.#serve(s).catch((e) => opts.log.error({ err: e }, 'connection handler crashed'));
    };
    const tls = opts.security?.tlsServer;
    this.#server = tls
      ? createTlsServer(
          {
            cert: tls.cert,
            key: tls.key,
            noDelay: true,
            keepAlive: true,
            handshakeTimeout: TLS_HANDSHAKE_TIMEOUT_MS,
          },
          serve,
        ).on('tlsClientError', (err) => opts.log.debug({ err: err.message }, 'TLS handshake failed'))
      : createServer({ noDelay: true, keepAlive: true }, serve);
  }

  /** Requests being handled right now (reported to trackers as load). */
  get inFlight(): number {
    return this.#inFlight;
  }

  get connections(): number {
    return this.#sockets.size;
  }

  listen(port: number, host = '127.0.0.1'): Promise<AddressInfo> {
    return new Promise((resolve, reject) => {
      const onError = (e: Error) => reject(e);
      this.#server.once('error', onError);
      this.#server.listen(port, host, () => {
        this.#server.off('error', onError);
        resolve(this.#server.address() as AddressInfo);
      });
    });
  }

  address(): AddressInfo {
    return this.#server.address() as AddressInfo;
  }

  /** Stops accepting, lets running requests finish (up to `graceMs`), then closes everything. */
  async close(graceMs = 5000): Promise<void> {
    this.#closing = true;
    const closed = new Promise<void>((r) => this.#server.close(() => r()));
    const deadline = Date.now() + graceMs;
    while (this.#inFlight > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    for (const s of this.#sockets) s.destroy();
    await closed;
  }

  async #serve(socket: Socket): Promise<void> {
    const { log: baseLog, hostname, replyCommand, handlers } = this.#opts;
    if (this.#closing) {
      socket.destroy();
      return;
    }
    this.#sockets.add(socket);
    const metrics = this.#opts.metrics;
    metrics?.connectionOpened();
    socket.setNoDelay(true);
    const conn: ConnectionInfo = {
      id: randomUUID().slice(0, 8),
      remoteAddress: normalizeAddress(socket.remoteAddress ?? ''),
      remotePort: socket.remotePort ?? 0,
    };
    const log = baseLog.child({ conn: conn.id, peer: `${conn.remoteAddress}:${conn.remotePort}` });
    const debug = log.isLevelEnabled('debug');
    socket.on('error', (e) => log.debug({ err: e }, 'socket error'));
    const sec = this.#opts.security;
    const auth: AuthState = { nonce: null, keyId: null };
    // An unauthenticated connection may stay idle for auth.timeoutMs at most (when auth is
    // required); an authenticated one for idleTimeoutMs (0 = for ever).
    const idleMs = this.#opts.idleTimeoutMs ?? 0;
    const unauthIdleMs = sec?.required
      ? idleMs > 0
        ? Math.min(idleMs, sec.timeoutMs)
        : sec.timeoutMs
      : idleMs;
    if (unauthIdleMs > 0) {
      socket.setTimeout(unauthIdleMs, () => {
        if (!busy) socket.destroy();
      });
    }
    const commands = [
      ...Object.keys(handlers).map(Number),
      Command.AUTH_CHALLENGE,
      Command.AUTH_PROVE,
      Command.REQUEST_CONTEXT,
    ];
    const reader = new FrameReader(requestSpecs(commands, this.#opts.maxUpload));
    const events = new SocketEvents(socket, reader, metrics);
    let busy = false;
    /** The request id for the next request (REQUEST_CONTEXT), spent by it. */
    let nextRequestId: string | undefined;

    // Replies to requests that came together (a client pipelining small requests,
    // @dsm/client pipeline.ts) go out together: while more requests of this connection are
    // parsed and waiting, replies are corked; they go out when none waits any more, or when
    // this turn of the event loop ends (a handler that waits for I/O holds nothing back).
    let corked = false;
    const uncork = (): void => {
      if (!corked) return;
      corked = false;
      socket.uncork();
    };
    /** Resolves when the socket has handed `b` to the OS (so its buffer may be reused). */
    const writeFlushed = (b: Uint8Array): Promise<void> =>
      new Promise((resolve, reject) => {
        if (socket.destroyed) return reject(new Error('socket closed'));
        uncork();
        metrics?.bytesOut(b.length);
        socket.write(b, (err) => (err ? reject(err) : resolve()));
      });
    const write = (b: Uint8Array): Promise<void> =>
      new Promise((resolve, reject) => {
        if (socket.destroyed) return reject(new Error('socket closed'));
        metrics?.bytesOut(b.length);
        if (!corked && events.waiting > 0) {
          corked = true;
          socket.cork();
          setImmediate(uncork);
        }
        if (socket.write(b)) return resolve();
        uncork(); // the buffer is full: out with it, then wait for the drain
        const onDrain = () => {
          socket.off('close', onClose);
          resolve();
        };
        const onClose = () => {
          socket.off('drain', onDrain);
          reject(new Error('socket closed'));
        };
        socket.once('drain', onDrain);
        socket.once('close', onClose);
      });

    const sendError = async (errno: number, message: string): Promise<void> => {
      const body = encodeErrorReply({ errno, message: `[${hostname}] ${message}` });
      try {
        await write(encodeFrame(replyCommand, body, Status.ERROR));
      } catch {
        // the peer is gone; nothing to tell it
      }
    };

    try {
      for (;;) {
        if (corked && events.waiting === 0) uncork();
        const ev = await events.next();
        if (ev.done) break;
        const e = ev.value;
        if (e.type === 'error') {
          log.info({ err: e.error.message, command: e.header?.command }, 'bad frame');
          metrics?.refused('bad_frame');
          await sendError(e.error.errno, e.error.message);
          break;
        }
        if (e.type !== 'frame' && e.type !== 'head') break; // cannot happen: data only follows head
        const header = e.header;
        // PING stays open to everyone: keepalived checks the node from 127.0.0.1, which an
        // allowFrom list of the cluster's network would otherwise refuse; it reveals nothing
        if (header.command !== Command.PING && !addressAllowed(sec?.allow ?? null, conn.remoteAddress)) {
          log.info({ command: header.command }, 'address not allowed');
          metrics?.refused('address');
          await sendError(Errno.UNAUTHORIZED, `Address Not Allowed: ${conn.remoteAddress}`);
          break;
        }
        if (header.command === Command.REQUEST_CONTEXT) {
          if (e.type !== 'frame') break; // cannot happen: buffered
          try {
            nextRequestId = decodeRequestContext(e.body);
          } catch (err) {
            const pe = err as { errno?: number; message: string };
            log.info({ command: header.command }, 'bad frame');
            metrics?.refused('bad_frame');
            await sendError(pe.errno ?? Errno.BAD_FIELD, pe.message);
            break;
          }
          continue; // no reply: the request it names follows
        }
        if (header.command === Command.AUTH_CHALLENGE || header.command === Command.AUTH_PROVE) {
          if (e.type !== 'frame') break; // cannot happen: both are buffered
          let step: Uint8Array | string;
          try {
            step = authStep(sec, auth, header.command, e.body);
          } catch {
            step = 'Authentication Failed'; // a malformed proof (bad key id field)
          }
          if (typeof step === 'string') {
            log.info({ command: header.command, msg: step }, 'authentication refused');
            metrics?.refused('auth_failed');
            await sendError(Errno.UNAUTHORIZED, step);
            break;
          }
          await write(encodeFrame(replyCommand, step));
          if (auth.keyId) {
            log.debug({ keyId: auth.keyId }, 'authenticated');
            socket.setTimeout(idleMs);
          }
          continue;
        }
        const access = commandAccess(header.command);
        if (sec?.required && !auth.keyId && (access === 'write' || (access === 'read' && sec.reads))) {
          log.info({ command: header.command }, 'unauthenticated request refused');
          metrics?.refused('unauthenticated');
          await sendError(
            Errno.UNAUTHORIZED,
            `Authentication Required: command ${header.command} needs a connection authenticated with a cluster key`,
          );
          break;
        }
        const handler = handlers[header.command];
        if (!handler) break;
        const isStream = e.type === 'head';
        let streamDone = !isStream;
        const stream: AsyncIterable<Uint8Array> = {
          async *[Symbol.asyncIterator]() {
            while (!streamDone) {
              const n = await events.next();
              if (n.done) throw new Error('connection closed in the middle of a body');
              const d = n.value;
              if (d.type === 'end') {
                streamDone = true;
                return;
              }
              if (d.type === 'data') yield d.chunk;
              else throw new Error('unexpected frame event in body');
            }
          },
        };
        let replied = false;
        const requestId = nextRequestId;
        nextRequestId = undefined;
        // the child logger is made only when something is logged (most requests log nothing)
        let childLog: Logger | undefined;
        const reqLog = (): Logger => {
          if (requestId === undefined) return log;
          childLog ??= log.child({ rid: requestId });
          return childLog;
        };
        const ctx: RequestContext = {
          header,
          body: e.type === 'frame' ? e.body : e.prefix,
          rest: e.type === 'head' ? e.rest : 0,
          stream,
          conn,
          requestId,
          get log() {
            return reqLog();
          },
          reply: async (body) => {
            replied = true;
            await write(encodeFrame(replyCommand, body));
          },
          replyFramed: async (frame) => {
            replied = true;
            encodeHeader(
              { bodyLength: frame.length - HEADER_LENGTH, command: replyCommand, status: Status.OK },
              frame,
              0,
            );
            await write(frame);
          },
          replyStream: async (length, source) => {
            replied = true;
            await write(encodeStreamHeader(replyCommand, length));
            let sent = 0;
            for await (const chunk of source) {
              if (sent + chunk.length > length) throw new ReplyStarted('stream source longer than declared');
              await writeFlushed(chunk);
              sent += chunk.length;
            }
            if (sent !== length) throw new ReplyStarted(`stream source ended at ${sent} of ${length} bytes`);
          },
        };
        busy = true;
        this.#inFlight++;
        const started = performance.now();
        let ok = true;
        let errno = 0;
        try {
          await handler(ctx);
          if (!replied) throw new Error(`handler for command ${header.command} sent no reply`);
        } catch (err) {
          ok = false;
          errno = errnoOf(err);
          if (replied) {
            // Bytes already went out: an error reply now would corrupt the stream (seed quirk 6).
            reqLog().warn({ err, command: header.command }, 'failed after the reply started; closing');
          } else {
            const message = err instanceof Error ? err.message : String(err);
            reqLog().info({ command: header.command, errno, msg: message }, 'request failed');
            await sendError(errno, message);
          }
        } finally {
          busy = false;
          this.#inFlight--;
          const seconds = (performance.now() - started) / 1000;
          metrics?.request(header.command, errno, seconds);
          // one line per request at debug (failures are also logged above at info)
          if (debug)
            reqLog().debug({ command: header.command, errno, ms: Math.round(seconds * 1000) }, 'request');
        }
        if (!ok) break;
        if (!streamDone) {
          // A handler that did not read its whole body leaves the stream unusable.
          break;
        }
        if (this.#closing) break;
      }
    } catch (err) {
      log.debug({ err }, 'connection ended');
    } finally {
      this.#sockets.delete(socket);
      metrics?.connectionClosed();
      if (!socket.destroyed) socket.end();
      try {
        this.#opts.onConnectionClose?.(conn);
      } catch (err) {
        log.error({ err }, 'onConnectionClose failed');
      }
      // end() waits for the peer; make sure nothing lingers
      setTimeout(() => socket.destroy(), 1000).unref();
      await events.return().catch(() => {});
    }
  }
}

/** Events waiting to be asked for before the socket is paused (backpressure on the peer). */
const MAX_QUEUED_EVENTS = 4;

/**
 * A connection's frame events, pushed by the socket's 'data' callbacks: what an async generator
 * over `for await (chunk of socket)` gave (the same events, end and errors), without the
 * generator's and the stream iterator's promise per chunk and per event (a tenth of what the
 * storage allocated per small download). The socket is paused while MAX_QUEUED_EVENTS events
 * wait, and once the reader is dead. `return()` destroys the socket unless its end was reached,
 * as leaving the generator's `for await` did.
 */
class SocketEvents {
  readonly #socket: Socket;
  readonly #queue: FrameEvent[] = [];
  #waiter: {
    resolve: (r: IteratorResult<FrameEvent, void>) => void;
    reject: (e: unknown) => void;
  } | null = null;
  /** No more events will be queued (the socket ended, closed or failed, or the reader died). */
  #over = false;
  #error: unknown = null;
  /** The end (or the error) was handed out. */
  #completed = false;

  constructor(socket: Socket, reader: FrameReader, metrics: ServerMetrics | undefined) {
    this.#socket = socket;
    socket.on('data', (chunk: Buffer) => {
      metrics?.bytesIn(chunk.length);
      if (this.#over) return;
      for (const e of reader.push(chunk)) this.#queue.push(e);
      if (reader.dead) {
        this.#over = true;
        socket.pause();
      } else if (this.#queue.length >= MAX_QUEUED_EVENTS) {
        socket.pause();
      }
      this.#wake();
    });
    const finish = (error: unknown) => {
      if (this.#over) return;
      this.#over = true;
      this.#error = error ?? (reader.idle ? null : new Error('connection closed in the middle of a frame'));
      this.#wake();
    };
    socket.on('end', () => finish(null));
    socket.on('close', () => finish(null));
    socket.on('error', (e) => finish(e));
  }

  /** Events parsed and not yet handed out (requests that came together with the current one). */
  get waiting(): number {
    return this.#queue.length;
  }

  next(): Promise<IteratorResult<FrameEvent, void>> {
    if (this.#queue.length > 0 || this.#over)
      return new Promise((resolve, reject) => this.#settle(resolve, reject));
    if (this.#socket.isPaused()) this.#socket.resume();
    return new Promise((resolve, reject) => {
      this.#waiter = { resolve, reject };
    });
  }

  #settle(resolve: (r: IteratorResult<FrameEvent, void>) => void, reject: (e: unknown) => void): void {
    const e = this.#queue.shift();
    if (e) {
      if (this.#queue.length === 0 && !this.#over && this.#socket.isPaused()) this.#socket.resume();
      resolve({ done: false, value: e });
      return;
    }
    this.#completed = true;
    if (this.#error) reject(this.#error);
    else resolve({ done: true, value: undefined });
  }

  /**
   * Hands a waiting `next()` what came. Only an event or the end does: a chunk that completed no
   * event (a frame arriving in pieces, a proxy forwarding a header alone) wakes nobody. (Waking
   * the waiter with an empty queue handed it the end, and the connection was closed mid-request:
   * the lost-reply suite's fault proxies found that.)
   */
  #wake(): void {
    const w = this.#waiter;
    if (!w || (this.#queue.length === 0 && !this.#over)) return;
    this.#waiter = null;
    this.#settle(w.resolve, w.reject);
  }

  return(): Promise<IteratorResult<FrameEvent, void>> {
    this.#over = true;
    if (!this.#completed) this.#socket.destroy();
    this.#completed = true;
    return Promise.resolve({ done: true, value: undefined });
  }
}

/**
 * One handshake step (messages/auth.ts in @dsm/packets): the reply body, or the text of the
 * UNAUTHORIZED error reply after which the connection is closed.
 */
function authStep(
  sec: ServerSecurity | undefined,
  auth: AuthState,
  command: number,
  body: Uint8Array,
): Uint8Array | string {
  if (!sec || sec.keys.size === 0) return 'Authentication Not Configured On This Node';
  if (auth.keyId) return 'Already Authenticated';
  if (command === Command.AUTH_CHALLENGE) {
    if (auth.nonce) return 'Authentication Failed: One Challenge Per Connection';
    auth.nonce = new Uint8Array(randomBytes(32));
    return encodeAuthChallengeReply(auth.nonce);
  }
  const nonce = auth.nonce;
  // one attempt per connection: the nonce is spent whatever the outcome
  auth.nonce = null;
  if (!nonce) return 'Authentication Failed: No Challenge';
  const m = decodeAuthProve(body);
  const secret = sec.keys.get(m.keyId);
  const want = hmac(secret ?? DUMMY_KEY, authTranscript(AUTH_CLIENT_LABEL, nonce, m.clientNonce, m.keyId));
  if (!timingSafeEqual(want, m.proof) || !secret) return 'Authentication Failed';
  auth.keyId = m.keyId;
  return encodeAuthProveReply(hmac(secret, authTranscript(AUTH_SERVER_LABEL, nonce, m.clientNonce, m.keyId)));
}

function hmac(key: Uint8Array, data: Uint8Array): Uint8Array {
  return new Uint8Array(createHmac('sha256', key).update(data).digest());
}

function normalizeAddress(a: string): string {
  return a.startsWith('::ffff:') ? a.slice(7) : a;
}

export { HEADER_LENGTH };
