import { type Server, STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import type { Logger } from '@dsm/common';
import { DsmError, ErrorCode } from '@dsm/common/errors';
import type { FastReply, FastRequest, FastUpload, StreamedBody } from './app.ts';
import { GatewayErrorCode } from './problem.ts';
import { SELF_COUNTED, type SelfCountedBody } from './streams.ts';

/**
 * The hot lane: the Node entry's plain-HTTP connections start here instead of in `node:http`.
 *
 * A keep-alive connection of a CDN edge or a player asks for one small file after another. Node's
 * HTTP server spends more per such request than the gateway's whole fast path (an
 * IncomingMessage and a ServerResponse, two streams, header validation, timers): on this machine
 * kind a bare `http` server answering 4 KiB from memory reaches about half of nginx, while a bare
 * `net` server answering the same bytes reaches nginx's rate (docs/performance.md). The lane reads
 * the connection's requests itself and answers the ones the fast path answers (app.ts fastFile:
 * a GET or HEAD of `/files/<id>`), with the same reply bytes as `node:http` would send.
 *
 * It parses only the plainest form of a request and gives the connection to `node:http` (which
 * then keeps it) on the first byte it does not take, before answering anything from that byte on:
 * the request's bytes and all after them are put back on the socket, unread. So a request the
 * lane answers is one both parsers read the same way (no body, no framing header, one line per
 * header), and every other request (a body, an upgrade, a malformed head, HTTP/1.0, a head cut
 * across packets, anything the fast path declines) meets `node:http` and its limits exactly as if
 * the lane did not exist. See handOff for the rules.
 *
 * Bounds: a head is at most `maxHeaderBytes` (longer: node:http, which answers 431); replies are
 * written one after another, and the lane reads nothing more while one waits for the storages
 * or for the client to take the previous one (so a client that pipelines without reading costs
 * one reply of memory); silence is cut as in node:http (headersMs before the first request,
 * keepAliveMs between requests, downloadIdleMs while a reply is pending), by one sweep of all
 * the lane's connections a quarter of the shortest of them apart instead of a timer per socket.
 */
export interface HotLaneOptions {
  /** The fast path (app.ts fastFile): a reply, a promise of one, or null for the app's requests. */
  fastFile: (req: FastRequest) => FastReply | Promise<FastReply | null> | null;
  /**
   * The fast upload (app.ts fastUpload): a raw POST whose body the lane reads itself (LaneBody),
   * or null for one the app takes. Without it every POST goes to node:http.
   */
  fastUpload?: (req: FastUpload) => Promise<FastReply> | null;
  /** The key the per-client caps count a request under: the peer, or whom a trusted proxy names. */
  clientOf: (peer: string, forwardedFor: string | undefined) => string;
  /** Whether the peer is a trusted proxy (its requests carry their client in X-Forwarded-For). */
  isProxy: (peer: string) => boolean;
  maxHeaderBytes: number;
  headersMs: number;
  keepAliveMs: number;
  downloadIdleMs: number;
  /** Silence allowed while a request body is read (node.ts ConnectionGuard's bodyIdleMs). */
  bodyIdleMs: number;
  /** Sent as X-Dsm-Worker on every reply (node.ts workerHeader). */
  workerHeader?: string;
  log: Logger;
}

const HEAD_END = Buffer.from('\r\n\r\n', 'latin1');
/** A header name (RFC 9110 token). */
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
/** A reply header value the lane writes as is: visible ASCII, space and tab (else node:http writes it). */
const PLAIN_VALUE = /^[\t\x20-\x7e]*$/;
/** A request header value node:http and the lane read alike: no control byte but tab, no CR/LF. */
const REQUEST_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;
/** node:http's answer to a head not whole within headersMs. */
const REQUEST_TIMEOUT = 'HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n';
/** A reply body up to this size is written in one buffer with its head (copied once). */
const JOINED_BODY_BYTES = 16 * 1024;
/**
 * Replies up to SLAB_REPLY_BYTES (head and body) are cut from a slab, as Buffer.allocUnsafe
 * does below 4 KiB: one allocation per SLAB_BYTES of replies instead of one per reply (a
 * measured 5 % of a cached 4 KiB GET). A slab lives while a reply cut from it is still being
 * written, that is while the client's kernel buffer is full: a stalled reader holds at most one
 * slab more than the kernel already holds for it.
 */
const SLAB_BYTES = 64 * 1024;
const SLAB_REPLY_BYTES = 8 * 1024;
let slab: Buffer | null = null;
let slabAt = 0;
function replyBuffer(n: number): Buffer {
  if (n > SLAB_REPLY_BYTES) return Buffer.allocUnsafe(n);
  if (slab === null || slabAt + n > SLAB_BYTES) {
    slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
    slabAt = 0;
  }
  const b = slab.subarray(slabAt, slabAt + n);
  slabAt += (n + 7) & ~7;
  return b;
}
/** Header lines past this many: node:http's (it knows its own count limits). */
const MAX_LINES = 64;

/** One request head as the lane reads it; null when node:http must read it. */
interface Head {
  method: string;
  target: string;
  /** Header names (lower case) and their values, side by side. */
  names: string[];
  values: string[];
  close: boolean;
  /** The body's length (a POST's Content-Length; 0 for GET and HEAD). */
  length: number;
  /** `Expect: 100-continue` (a POST only). */
  expect: boolean;
}

/** A Content-Length the lane reads as node:http does: digits only (no sign, list or space). */
const DECIMAL = /^\d{1,15}$/;

/** The value of the header `name` (lower case) in `head`. */
export function headerOf(head: Head, name: string): string | undefined {
  const names = head.names;
  for (let i = 0; i < names.length; i++) if (names[i] === name) return head.values[i];
  return undefined;
}

/**
 * Parses `text` (a request head without its final CRLF CRLF, as latin1) or returns null for one
 * the lane leaves to node:http: anything but `GET|HEAD|POST SP origin-form SP HTTP/1.1`; a
 * header line without a colon, starting with whitespace (obsolete folding) or holding a bare CR
 * or LF; a name that is not a token or a value with a control byte; a repeated name (node:http
 * joins some and drops others); Transfer-Encoding or Upgrade (another framing or protocol); a
 * GET or HEAD with Content-Length or Expect; a POST without a Content-Length of plain digits,
 * or with an Expect other than 100-continue; a Connection header with anything but keep-alive
 * and close; no Host. So the only body the lane ever reads is a POST's, framed by one
 * Content-Length that both parsers read alike.
 */
export function parseHead(text: string): Head | null {
  let eol = text.indexOf('\r\n');
  if (eol < 0) eol = text.length;
  const line = text.slice(0, eol);
  let method: string;
  if (line.startsWith('GET /')) method = 'GET';
  else if (line.startsWith('HEAD /')) method = 'HEAD';
  else if (line.startsWith('POST /')) method = 'POST';
  else return null;
  const post = method === 'POST';
  if (!line.endsWith(' HTTP/1.1')) return null;
  const target = line.slice(method.length + 1, line.length - 9);
  // origin-form: visible ASCII, no space
  if (!/^\/[\x21-\x7e]*$/.test(target)) return null;
  const names: string[] = [];
  const values: string[] = [];
  let close = false;
  let host = false;
  let length = -1;
  let expect = false;
  let at = eol + 2;
  let lines = 0;
  while (at < text.length) {
    if (++lines > MAX_LINES) return null;
    let end = text.indexOf('\r\n', at);
    if (end < 0) end = text.length;
    const h = text.slice(at, end);
    at = end + 2;
    const colon = h.indexOf(':');
    if (colon <= 0) return null;
    const name = h.slice(0, colon).toLowerCase();
    if (!TOKEN.test(name)) return null;
    let a = colon + 1;
    let b = h.length;
    while (a < b && (h.charCodeAt(a) === 32 || h.charCodeAt(a) === 9)) a++;
    while (b > a && (h.charCodeAt(b - 1) === 32 || h.charCodeAt(b - 1) === 9)) b--;
    const value = h.slice(a, b);
    if (!REQUEST_VALUE.test(value)) return null;
    if (names.includes(name)) return null;
    switch (name) {
      case 'content-length':
        if (!post || !DECIMAL.test(value)) return null;
        length = Number(value);
        break;
      case 'expect':
        if (!post || value.toLowerCase() !== '100-continue') return null;
        expect = true;
        break;
      case 'transfer-encoding':
      case 'upgrade':
        return null;
      case 'host':
        host = true;
        break;
      case 'connection':
        for (const t of value.toLowerCase().split(',')) {
          const token = t.trim();
          if (token === 'close') close = true;
          else if (token !== 'keep-alive') return null;
        }
        break;
    }
    names.push(name);
    values.push(value);
  }
  if (!host) return null;
  if (post && length < 0) return null;
  return { method, target, names, values, close, length: post ? length : 0, expect };
}

/** Date header text, made once a second (as node:http does). */
let dateSecond = -1;
let dateText = '';
function httpDate(): string {
  const now = Date.now();
  const second = Math.floor(now / 1000);
  if (second !== dateSecond) {
    dateSecond = second;
    dateText = new Date(second * 1000).toUTCString();
  }
  return dateText;
}

/** A reply header name already checked to be a token. */
interface CheckedName {
  /** Content-Length, in any case. */
  length: boolean;
  /** The last value checked under this name (the same value again needs no second test). */
  last: string;
}
const checkedNames = new Map<string, CheckedName>();

/**
 * A reply head in three parts, written one after another: `pre` (the status line, X-Dsm-Worker
 * and a shared head's lines, kept as bytes per FastReply.shared: copied, not rendered again),
 * `text` (the rest of the reply's own lines), `tail` (Date, Connection, Keep-Alive and the blank
 * line, made once a second). A cached GET renders only its request id line.
 */
interface HeadParts {
  pre: Buffer | null;
  text: string;
  tail: Buffer;
}

/** The head's bytes. */
const headLength = (h: HeadParts): number => (h.pre?.length ?? 0) + h.text.length + h.tail.length;

/** Writes the head into `out` from 0; returns its length. */
function writeHead(h: HeadParts, out: Buffer): number {
  let at = 0;
  if (h.pre !== null) at = h.pre.copy(out, 0);
  if (h.text.length > 0) at += out.write(h.text, at, 'latin1');
  return at + h.tail.copy(out, at);
}

/**
 * The reply's head as node:http writes it for writeHead + end (status line, the reply's headers,
 * a Content-Length when the reply has none, Date, Connection and Keep-Alive), or null when a
 * header is one the lane does not write itself (a value with a byte outside visible ASCII, or an
 * odd name): node:http then writes the reply, with its own checks.
 */
function replyHeadParts(reply: FastReply, close: boolean, style: HeadStyle): HeadParts | null {
  const status = style.statusLines(reply.status);
  if (status === null) return null;
  let pre: Buffer | null = null;
  let text = '';
  let length = false;
  const shared = reply.shared;
  if (shared) {
    const lines = sharedHeadOf(shared, reply.status, status);
    if (lines === null) return null;
    pre = lines.bytes;
    length = lines.length;
  } else text = status;
  const own = headerLines(reply.headers);
  if (own === null) return null;
  text += own.text;
  const body = reply.body;
  if (!length && !own.length && body && reply.status !== 204 && reply.status !== 304)
    text += `Content-Length: ${body.byteLength}\r\n`;
  return { pre, text, tail: style.tail(close) };
}

/** replyHead's parts as one text (tests). */
export function replyHead(
  reply: FastReply,
  close: boolean,
  keepAliveSec: number,
  workerHeader: string | undefined,
): string | null {
  const h = replyHeadParts(reply, close, new HeadStyle(keepAliveSec, workerHeader));
  if (h === null) return null;
  return (h.pre?.toString('latin1') ?? '') + h.text + h.tail.toString('latin1');
}

/**
 * What one lane's reply heads have in common: the status lines (with its X-Dsm-Worker), made
 * once per status, and the tail of this second (httpDate), with keep-alive and with close.
 */
class HeadStyle {
  readonly #keepAliveSec: number;
  readonly #worker: string | undefined;
  readonly #status = new Map<number, string | null>();
  #second = -1;
  #keep = Buffer.alloc(0);
  #close = Buffer.alloc(0);

  constructor(keepAliveSec: number, workerHeader: string | undefined) {
    this.#keepAliveSec = keepAliveSec;
    this.#worker = workerHeader;
  }

  /** The status line and X-Dsm-Worker, or null for a status without a reason phrase. */
  statusLines(code: number): string | null {
    let lines = this.#status.get(code);
    if (lines === undefined) {
      const reason = STATUS_CODES[code];
      const line = reason === undefined ? null : `HTTP/1.1 ${code} ${reason}\r\n`;
      lines = line === null || this.#worker === undefined ? line : `${line}X-Dsm-Worker: ${this.#worker}\r\n`;
      // the gateway's replies use a few statuses; any other is made again each time
      if (this.#status.size < 64) this.#status.set(code, lines);
    }
    return lines;
  }

  /** Date, Connection, Keep-Alive (with keep-alive) and the blank line. */
  tail(close: boolean): Buffer {
    const date = httpDate();
    if (this.#second !== dateSecond) {
      this.#second = dateSecond;
      this.#keep = Buffer.from(
        `Date: ${date}\r\nConnection: keep-alive\r\nKeep-Alive: timeout=${this.#keepAliveSec}\r\n\r\n`,
        'latin1',
      );
      this.#close = Buffer.from(`Date: ${date}\r\nConnection: close\r\n\r\n`, 'latin1');
    }
    return close ? this.#close : this.#keep;
  }
}

/** A shared head's lines, as bytes after the status lines they were made with. */
interface SharedHead {
  status: string;
  bytes: Buffer;
  length: boolean;
}

/** Shared heads (FastReply.shared), made once per object and status lines (null: not the lane's to write). */
const sharedHeads = new WeakMap<object, SharedHead | null>();

function sharedHeadOf(
  shared: Readonly<Record<string, string>>,
  code: number,
  status: string,
): SharedHead | null {
  let h = sharedHeads.get(shared);
  if (h === undefined || (h !== null && h.status !== status)) {
    const lines = headerLines(shared);
    h = lines && { status, bytes: Buffer.from(status + lines.text, 'latin1'), length: lines.length };
    // a shared head goes with one status: a reply of another keeps its own
    if (h === null || code === 200) sharedHeads.set(shared, h);
  }
  return h;
}

/** Header lines as the lane writes them, and whether they hold a Content-Length. */
interface Lines {
  text: string;
  length: boolean;
}

/** `headers` as header lines, or null when one is not the lane's to write (replyHead). */
function headerLines(headers: Readonly<Record<string, string>>): Lines | null {
  let text = '';
  let length = false;
  for (const k in headers) {
    const v = headers[k] as string;
    let name = checkedNames.get(k);
    if (name === undefined) {
      if (!TOKEN.test(k) || k.length > 64) return null;
      const lower = k.toLowerCase();
      // headers node:http treats itself: leave such a reply to it
      if (
        lower === 'connection' ||
        lower === 'date' ||
        lower === 'transfer-encoding' ||
        lower === 'keep-alive'
      )
        return null;
      name = { length: lower === 'content-length', last: '' };
      if (checkedNames.size < 256) checkedNames.set(k, name);
    }
    if (v !== name.last) {
      if (!PLAIN_VALUE.test(v)) return null;
      name.last = v;
    }
    if (name.length) length = true;
    text += `${k}: ${v}\r\n`;
  }
  return { text, length };
}

/** Takes a server's plain connections into the lane (see the file's comment). */
export class HotLane {
  readonly #opts: HotLaneOptions;
  readonly #style: HeadStyle;
  readonly #open = new Set<LaneConnection>();
  #toHttp: ((socket: Socket) => void) | null = null;
  /** The silence clock: the sweeps so far (connections note the sweep of their last activity). */
  #tick = 0;
  /** Milliseconds between sweeps: a quarter of the shortest timeout, 25 ms to 1 s. */
  readonly sweepMs: number;
  #sweeper: ReturnType<typeof setInterval> | null = null;

  constructor(opts: HotLaneOptions) {
    this.#opts = opts;
    this.#style = new HeadStyle(Math.floor(opts.keepAliveMs / 1000), opts.workerHeader);
    this.sweepMs = Math.max(25, Math.min(1000, Math.floor(Math.min(opts.headersMs, opts.keepAliveMs) / 4)));
  }

  /** The current sweep (activity is noted in sweeps, not read from a clock per request). */
  get tick(): number {
    return this.#tick;
  }

  /**
   * The lane's timeouts: one timer for all its connections instead of a socket timer each
   * (re-armed by every read and write, a sixth of a small request's cost). Each connection
   * notes the sweep of its last activity; a sweep closes those silent for longer than their
   * phase allows (LaneConnection.sweep), to within one sweep.
   */
  #sweep(): void {
    this.#tick++;
    for (const c of this.#open) c.sweep(this.#tick, this.sweepMs);
  }

  /**
   * Puts the lane in front of `server`'s own connection handling (node:http's listener is taken
   * off the 'connection' event and called when the lane hands a socket over). `skip`: sockets
   * that go to node:http at once (one the per-address cap refused). False when node:http's
   * listener was not found (another Node version): the server is left as it was.
   */
  attach(server: Server, skip: (socket: Socket) => boolean): boolean {
    const http = server.listeners('connection').find((f) => f.name === 'connectionListener') as
      | ((this: Server, socket: Socket) => void)
      | undefined;
    if (!http) {
      this.#opts.log.warn('hot lane off: node:http connection listener not found');
      return false;
    }
    server.removeListener('connection', http as (...args: unknown[]) => void);
    this.#toHttp = (socket) => http.call(server, socket);
    this.#sweeper = setInterval(() => this.#sweep(), this.sweepMs);
    this.#sweeper.unref();
    server.on('connection', (socket: Socket) => {
      if (skip(socket) || socket.destroyed) http.call(server, socket);
      else new LaneConnection(this, socket);
    });
    return true;
  }

  /** Ends the lane's connections (waiting ones after their reply), then destroys what is left after `graceMs`. */
  close(graceMs = 2000): void {
    if (this.#sweeper) clearInterval(this.#sweeper);
    this.#sweeper = null;
    for (const c of this.#open) c.close();
    if (this.#open.size === 0) return;
    const left = [...this.#open];
    setTimeout(() => {
      for (const c of left) c.socket.destroy();
    }, graceMs).unref();
  }

  /** Connections in the lane now (tests). */
  get size(): number {
    return this.#open.size;
  }

  /** Whether the client's connection from local port `port` is in the lane now (tests). */
  holds(port: number): boolean {
    for (const c of this.#open) if (c.socket.remotePort === port) return true;
    return false;
  }

  /** @internal */
  get opts(): HotLaneOptions {
    return this.#opts;
  }

  /** @internal */
  get style(): HeadStyle {
    return this.#style;
  }

  /** @internal */
  opened(c: LaneConnection): void {
    this.#open.add(c);
  }

  /** @internal the connection left the lane (closed, or handed to node:http when `socket` is set). */
  left(c: LaneConnection, socket?: Socket): void {
    this.#open.delete(c);
    if (socket) (this.#toHttp as (socket: Socket) => void)(socket);
  }
}

/** node:http's interim reply to `Expect: 100-continue` (sent when the lane takes the upload). */
const CONTINUE = 'HTTP/1.1 100 Continue\r\n\r\n';

/**
 * The body of a POST the lane takes (HotLaneOptions.fastUpload): exactly the Content-Length's
 * bytes of the connection, handed to the upload as they arrive, without node:http's parser (which
 * copies every body byte) and without its streams. It is the upload's one reader: a chunk waits
 * for it (the socket is paused while one does, so the storage's pace is the client's), it ends
 * after the last byte, and it throws BODY_INCOMPLETE when the connection closes first. A reader
 * that stops early (the upload failed) makes the rest of the body be read and dropped, as
 * node:http does after answering a request whose body it did not read.
 */
export class LaneBody implements AsyncIterableIterator<Uint8Array>, SelfCountedBody {
  readonly [SELF_COUNTED] = true as const;
  /** Bytes handed to the reader (files.ts CountedBody). */
  received = 0;
  /** The body's length: it yields exactly this many bytes or throws (streams.ts exactLength). */
  readonly exactLength: number;
  /** Bytes still to come from the socket. */
  #left: number;
  readonly #queue: Buffer[] = [];
  #waiter: { resolve: (r: IteratorResult<Uint8Array>) => void; reject: (e: unknown) => void } | null = null;
  #error: unknown = null;
  #dropping = false;
  readonly #socket: Socket;

  constructor(length: number, socket: Socket) {
    this.exactLength = length;
    this.#left = length;
    this.#socket = socket;
  }

  /** All the body's bytes came from the socket (some may still wait for the reader). */
  get complete(): boolean {
    return this.#left === 0;
  }

  /** Takes the body's part of `d`; returns the bytes past the body (the next request's), or null. */
  feed(d: Buffer): Buffer | null {
    const n = Math.min(this.#left, d.length);
    this.#left -= n;
    const rest = n < d.length ? d.subarray(n) : null;
    if (n > 0 && !this.#dropping) {
      const part = rest === null ? d : d.subarray(0, n);
      const w = this.#waiter;
      if (w !== null) {
        this.#waiter = null;
        this.received += n;
        w.resolve({ value: part, done: false });
      } else {
        this.#queue.push(part);
        this.#socket.pause(); // until the reader takes it
      }
    }
    if (this.#left === 0 && this.#waiter !== null) {
      const w = this.#waiter;
      this.#waiter = null;
      w.resolve({ value: undefined, done: true });
    }
    return rest;
  }

  next(): Promise<IteratorResult<Uint8Array>> {
    const c = this.#queue.shift();
    if (c !== undefined) {
      this.received += c.length;
      if (this.#queue.length === 0 && this.#left > 0) this.#socket.resume();
      return Promise.resolve({ value: c, done: false });
    }
    if (this.#error !== null) return Promise.reject(this.#error);
    if (this.#left === 0 || this.#dropping) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => {
      this.#waiter = { resolve, reject };
    });
  }

  /** The reader stops early: the rest is dropped. */
  return(): Promise<IteratorResult<Uint8Array>> {
    this.discard();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  /** No one reads the rest (the reader stopped, or the reply went out first): it is read and dropped. */
  discard(): void {
    if (this.#dropping) return;
    this.#dropping = true;
    this.#queue.length = 0;
    if (this.#left > 0) this.#socket.resume();
    const w = this.#waiter;
    this.#waiter = null;
    w?.resolve({ value: undefined, done: true });
  }

  /** The connection ended before the last byte. */
  fail(): void {
    if (this.#left === 0 || this.#error !== null) return;
    this.#error = new DsmError(
      GatewayErrorCode.BODY_INCOMPLETE,
      `request body ended early: the connection closed ${this.#left} bytes short`,
    );
    const w = this.#waiter;
    this.#waiter = null;
    w?.reject(this.#error);
  }
}

/** One connection in the lane. */
class LaneConnection {
  readonly socket: Socket;
  readonly #lane: HotLane;
  /** Bytes read and not yet answered. */
  #buf: Buffer | null = null;
  /** The body of the POST being answered, until it is all read and its reply written. */
  #body: LaneBody | null = null;
  /** A reply waits (for the storages, or for the client to take the previous one). */
  #busy = false;
  #ended = false;
  #closing = false;
  /** socket.end() was called. */
  #ending = false;
  #gone = false;
  /** The silence allowed in the connection's phase (ms): headersMs, keepAliveMs or downloadIdleMs. */
  #timeout: number;
  /** The lane's sweep at the connection's last activity (a read, a write, a drain). */
  #active: number;
  /** Bytes waiting in the socket at the last sweep (a client taking them is activity). */
  #pending = 0;
  /** When the buffer began to hold a head not yet whole (0: it does not). */
  #partialSince = 0;
  /** The per-client key when it is the peer's (no trusted proxy in front). */
  readonly #client: string | null;
  readonly #peer: string;

  readonly #onData = (d: Buffer) => {
    this.#active = this.#lane.tick;
    const body = this.#body;
    if (body !== null && !body.complete) {
      const rest = body.feed(d);
      if (rest !== null) this.#buf = rest;
      if (body.complete) this.#bodyRead();
      return;
    }
    this.#buf = this.#buf ? Buffer.concat([this.#buf, d]) : d;
    if (!this.#busy) this.#pump();
  };
  readonly #onEnd = () => {
    this.#ended = true;
    const body = this.#body;
    if (body !== null && !body.complete) {
      body.fail();
      this.#body = null;
    }
    if (!this.#busy) this.#finish();
  };
  readonly #onClose = () => {
    this.#body?.fail();
    this.#leave();
  };
  readonly #onError = () => {};
  readonly #onDrain = () => {
    this.#busy = false;
    this.#timeoutFor(this.#lane.opts.keepAliveMs);
    this.socket.resume();
    this.#pump();
  };

  constructor(lane: HotLane, socket: Socket) {
    this.#lane = lane;
    this.socket = socket;
    const o = lane.opts;
    this.#peer = socket.remoteAddress ?? 'unknown';
    this.#client = o.isProxy(this.#peer) ? null : o.clientOf(this.#peer, undefined);
    this.#timeout = o.headersMs;
    this.#active = lane.tick;
    socket.on('data', this.#onData);
    socket.on('end', this.#onEnd);
    socket.on('error', this.#onError);
    socket.on('close', this.#onClose);
    lane.opened(this);
  }

  /**
   * The buffer ends in a head not yet whole (a packet boundary in a pipelined burst, or a slow
   * client): wait for the rest, as node:http does, for at most headersMs in all (silence is cut
   * by the lane's sweep; a client sending a byte now and then, at its next byte past it).
   */
  #partial(): void {
    const o = this.#lane.opts;
    if (this.#ended) {
      this.socket.destroy(); // a head the client will never finish
      return;
    }
    const now = Date.now();
    if (this.#partialSince === 0) {
      this.#partialSince = now;
      this.#timeoutFor(o.headersMs);
    } else if (now - this.#partialSince > o.headersMs) {
      // as node:http: the 408, then the socket closed (not only ended: a client that never
      // closes its side would hold it)
      this.socket.write(REQUEST_TIMEOUT);
      this.socket.destroy();
    }
  }

  /** The connection's phase changed: its silence allowed from now on. */
  #timeoutFor(ms: number): void {
    this.#timeout = ms;
    this.#active = this.#lane.tick;
  }

  /**
   * The lane's sweep (HotLane.#sweep): closes the connection when it has been silent for longer
   * than its phase allows, as a socket timeout would (a client taking bytes of a reply is not
   * silent).
   */
  sweep(tick: number, sweepMs: number): void {
    const pending = this.socket.writableLength;
    if (pending < this.#pending) this.#active = tick;
    this.#pending = pending;
    if ((tick - this.#active) * sweepMs > this.#timeout) this.socket.destroy();
  }

  /** Answers the buffered requests in order, until one needs node:http or a reply must wait. */
  #pump(): void {
    const o = this.#lane.opts;
    while (!this.#busy && !this.#gone) {
      if (this.#body !== null) {
        if (!this.#body.complete) return; // a body the reply did not wait for is being dropped
        this.#body = null;
      }
      const buf = this.#buf;
      if (!buf || buf.length === 0) {
        this.#buf = null;
        if (this.#ended || this.#closing) this.#finish();
        return;
      }
      if (this.#closing) {
        this.#buf = null; // after Connection: close, nothing more is read
        return;
      }
      const end = buf.indexOf(HEAD_END);
      if (end < 0 || end > o.maxHeaderBytes) {
        if (buf.length > o.maxHeaderBytes) {
          // node:http's 431
          this.#handOff();
          return;
        }
        this.#partial();
        return;
      }
      this.#partialSince = 0;
      const head = parseHead(buf.toString('latin1', 0, end));
      if (!head) {
        this.#handOff();
        return;
      }
      if (head.method === 'POST') {
        if (!this.#upload(head, end + 4)) this.#handOff();
        return;
      }
      let r: ReturnType<HotLaneOptions['fastFile']>;
      try {
        r = o.fastFile(this.#request(head));
      } catch (e) {
        o.log.error({ err: e }, 'request failed');
        this.socket.destroy();
        return;
      }
      if (r === null) {
        this.#handOff();
        return;
      }
      const size = end + 4;
      if (r instanceof Promise) {
        this.#busy = true;
        this.socket.pause();
        this.#timeoutFor(o.downloadIdleMs);
        r.then(
          (reply) => {
            if (this.#gone) {
              // the client left while its reply was made: a stream opened for it is closed
              if (reply?.stream) void this.#drop(reply.stream);
              return;
            }
            this.#busy = false;
            if (!reply || !this.#write(reply, head, size)) {
              this.#handOff();
              return;
            }
            if (this.#busy) return; // waits for 'drain'
            this.socket.resume();
            this.#pump();
          },
          (e: unknown) => {
            o.log.error({ err: e }, 'request failed');
            this.socket.destroy();
          },
        );
        return;
      }
      if (!this.#write(r, head, size)) {
        this.#handOff();
        return;
      }
    }
  }

  /**
   * Writes `reply` to the request `head` (its `size` bytes leave the buffer). False, with nothing
   * written, when node:http must write it (replyHead). Waits for 'drain' when the client has not
   * taken what was written.
   */
  #write(reply: FastReply, head: Head, size: number): boolean {
    const lane = this.#lane;
    const parts = replyHeadParts(reply, head.close, lane.style);
    const stream = reply.stream;
    if (parts === null) {
      if (stream) void this.#drop(stream);
      return false;
    }
    if (size > 0) {
      const buf = this.#buf as Buffer;
      this.#buf = size < buf.length ? buf.subarray(size) : null;
    }
    const s = this.socket;
    const headBytes = headLength(parts);
    if (stream) {
      const out = Buffer.allocUnsafe(headBytes);
      writeHead(parts, out);
      s.write(out);
      this.#busy = true;
      s.pause();
      this.#timeoutFor(lane.opts.downloadIdleMs);
      void this.#stream(stream, head.close);
      return true;
    }
    const body = head.method === 'HEAD' || reply.status === 204 || reply.status === 304 ? null : reply.body;
    const joined = body && body.byteLength > 0 && body.byteLength <= JOINED_BODY_BYTES ? body : null;
    // one buffer, one write: cheaper than a corked pair for a small body
    const out = replyBuffer(headBytes + (joined?.byteLength ?? 0));
    writeHead(parts, out);
    if (joined) out.set(joined, headBytes);
    let more: boolean;
    if (body && body.byteLength > 0 && !joined) {
      s.cork();
      s.write(out);
      more = s.write(body);
      s.uncork();
    } else more = s.write(out);
    if (head.close) {
      this.#buf = null;
      this.#timeoutFor(lane.opts.keepAliveMs);
      this.#finish();
      return true;
    }
    if (more) this.#timeoutFor(lane.opts.keepAliveMs);
    else {
      this.#busy = true;
      s.pause();
      this.#timeoutFor(lane.opts.downloadIdleMs);
      s.once('drain', this.#onDrain);
    }
    return true;
  }

  /**
   * Sends a streamed body (FastReply.stream; its head is written) as the client takes it: the
   * next chunk is read from the storage when the socket has taken the last one (its 'drain'), so
   * a slow client holds one chunk here; one that stops reading gives its storage connection back
   * (ReleasingSource) and is cut after downloadIdleMs like any pending reply (the sweep). A
   * storage failing midway, or a body shorter than its Content-Length, cuts the connection (the
   * client sees a short body, as from node:http). Then the next request, or the end.
   */
  async #stream(b: StreamedBody, close: boolean): Promise<void> {
    const s = this.socket;
    const src = b.source;
    let error: unknown;
    let cancelled = false;
    try {
      for (;;) {
        const chunk = await src.next();
        if (this.#gone || s.destroyed) {
          cancelled = true;
          break;
        }
        if (chunk === null) break;
        b.onChunk(chunk.length);
        if (!s.write(chunk) && !(await this.#drained())) {
          cancelled = true;
          break;
        }
      }
      if (!cancelled && src.delivered !== b.length)
        error = new DsmError(
          ErrorCode.PROTOCOL,
          `the storage ended the download after ${src.delivered} of ${b.length} bytes`,
        );
    } catch (e) {
      error = e;
    }
    if (cancelled || error !== undefined) {
      await src.close();
      b.onEnd(error, cancelled);
      s.destroy();
      return;
    }
    b.onEnd(undefined, false);
    if (this.#gone) return;
    this.#busy = false;
    if (close) {
      this.#buf = null;
      this.#finish();
      return;
    }
    this.#timeoutFor(this.#lane.opts.keepAliveMs);
    s.resume();
    this.#pump();
  }

  /** Whether the socket took what was written ('drain'); false when it closed first. */
  #drained(): Promise<boolean> {
    const s = this.socket;
    if (s.destroyed) return Promise.resolve(false);
    return new Promise((resolve) => {
      const done = (ok: boolean) => {
        s.removeListener('drain', onDrain);
        s.removeListener('close', onClose);
        resolve(ok);
      };
      const onDrain = () => done(true);
      const onClose = () => done(false);
      s.on('drain', onDrain);
      s.on('close', onClose);
    });
  }

  /** A streamed body that will not be sent (its reply goes to node:http): closed, its slot freed. */
  async #drop(b: StreamedBody): Promise<void> {
    await b.source.close();
    b.onEnd(undefined, true);
  }

  /** The request `head` as the fast path reads it. */
  #request(head: Head): FastRequest {
    return {
      method: head.method,
      target: head.target,
      header: (name) => headerOf(head, name),
      client: this.#client ?? this.#lane.opts.clientOf(this.#peer, headerOf(head, 'x-forwarded-for')),
      streams: true,
    };
  }

  /**
   * A POST (`head`, `size` bytes of head in the buffer): when the fast upload takes it, the lane
   * reads its body (LaneBody) and writes the reply. False, with nothing read, when node:http must
   * answer it (no fastUpload, or a request the app takes).
   */
  #upload(head: Head, size: number): boolean {
    const o = this.#lane.opts;
    if (!o.fastUpload) return false;
    const s = this.socket;
    const body = new LaneBody(head.length, s);
    let r: Promise<FastReply> | null;
    try {
      r = o.fastUpload({ ...this.#request(head), secure: false, body: () => body });
    } catch (e) {
      o.log.error({ err: e }, 'request failed');
      s.destroy();
      return true;
    }
    if (r === null) return false;
    const buf = this.#buf as Buffer;
    this.#buf = null;
    this.#body = body;
    this.#busy = true;
    this.#timeoutFor(o.bodyIdleMs);
    // as node:http, which answers it before the request reaches the app
    if (head.expect) s.write(CONTINUE, 'latin1');
    if (size < buf.length) this.#buf = body.feed(buf.subarray(size));
    if (body.complete) this.#bodyRead();
    r.then(
      (reply) => {
        if (this.#gone) return;
        this.#busy = false;
        // answered before the body was all read (an error): the rest is read and dropped
        if (!body.complete) body.discard();
        if (!this.#write(reply, head, 0)) {
          o.log.error({ status: reply.status }, 'upload reply not writable by the hot lane');
          s.destroy();
          return;
        }
        // the rest of the body is being dropped (#bodyRead goes on after its last byte), unless
        // the client ended it: then nothing more comes, and #pump ends the connection
        if (!body.complete && !this.#ended) {
          this.#timeoutFor(o.bodyIdleMs);
          return;
        }
        if (this.#busy) return; // waits for 'drain'
        s.resume();
        this.#pump();
      },
      (e: unknown) => {
        o.log.error({ err: e }, 'request failed');
        s.destroy();
      },
    );
    return true;
  }

  /**
   * The POST's body is all read: while its reply is pending nothing more is read (as for a GET's);
   * after it, the next request.
   */
  #bodyRead(): void {
    if (this.#busy) {
      this.socket.pause();
      this.#timeoutFor(this.#lane.opts.downloadIdleMs);
      return;
    }
    this.#timeoutFor(this.#lane.opts.keepAliveMs);
    this.#pump();
  }

  /** The client sent FIN, or the gateway closes: end the connection when nothing is pending. */
  #finish(): void {
    if (this.#gone || this.#ending) return;
    if (this.#buf && this.#buf.length > 0 && !this.#closing) {
      this.#pump();
      return;
    }
    this.#closing = true;
    this.#ending = true;
    this.socket.end();
  }

  /** The gateway closes: end the connection now, or after its pending reply. */
  close(): void {
    this.#closing = true;
    if (!this.#busy) this.#finish();
  }

  /**
   * Gives the connection to node:http: the bytes not answered (the request the lane does not
   * take, and all after it) are put back unread, node:http's connection listener takes the
   * socket as if it had just been accepted, and reading resumes. A client that already sent its
   * FIN cannot have bytes put back (a stream cannot be unshifted after its end): such a
   * connection is closed.
   */
  #handOff(): void {
    if (this.#gone) return;
    const s = this.socket;
    const buf = this.#buf;
    this.#detach();
    if (this.#ended || this.#closing) {
      s.destroy();
      return;
    }
    s.pause();
    if (buf && buf.length > 0) s.unshift(buf);
    this.#lane.left(this, s);
    s.resume();
  }

  #detach(): void {
    this.#gone = true;
    this.#buf = null;
    const s = this.socket;
    s.removeListener('data', this.#onData);
    s.removeListener('end', this.#onEnd);
    // the no-op 'error' listener stays: a socket the lane ends or destroys may still report one
    s.removeListener('close', this.#onClose);
    s.removeListener('drain', this.#onDrain);
  }

  #leave(): void {
    if (this.#gone) return;
    this.#detach();
    this.#lane.left(this);
  }
}
