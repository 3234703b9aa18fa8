import { createHash } from 'node:crypto';
import { isIP, connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { DsmError, ErrorCode } from '@dsm/common/errors';
import type { ByteSocket, ConnectOptions, Sha256Hasher, Transport } from './transport.ts';

/**
 * Bytes queued before the socket is paused (backpressure towards the server). With the read
 * in flight (at most `READ_BYTES`), a reader that does not read costs at most 320 KiB per
 * connection, what 5 reads of 64 KiB were. A gateway streaming to 50 slow clients held up to
 * 1 MiB per storage connection when the bound was 16 chunks (50 MiB in all: its RSS peak went
 * 177-188 → 154 MiB with 4 chunks, curl clients at 4 MiB/s), and a single fast stream is as
 * fast with this (the kernel's socket buffer is the rest of the read-ahead).
 */
export const HIGH_WATER_BYTES = 64 * 1024;

/**
 * The size of one socket read of a plain TCP connection that streams to a reader keeping up
 * (Node's own reads are 64 KiB). A 1 GiB download then costs about 4,300 reads and chunks
 * instead of 16,400, and each chunk costs the gateway its stream and write steps once: its CPU
 * per GiB of a 1 GiB GET went from 0.9-1.1 s to 0.5-0.6 s.
 */
export const READ_BYTES = 256 * 1024;

/** The size of every other read: Node's own. */
export const SLOW_READ_BYTES = 64 * 1024;

/**
 * Connections of a process that read `READ_BYTES` at a time; the others read `SLOW_READ_BYTES`.
 * Bigger chunks are held longer (in the HTTP responses' write buffers, and as garbage, since
 * fewer chunks make the GC run less often): with every connection reading big, the gateway's
 * RSS peak with 50 streams of 1 GiB went over its 200 MiB bound in bench runs (195, 221; 228
 * with 8 places), against 154-195 before. With 2 places it was 173, and a single big stream
 * keeps the CPU it saves.
 */
export const MAX_BIG_READERS = 2;

/**
 * A place held by a connection that has not read for this long (a pooled connection whose last
 * reply ended on a full read) goes to a connection that wants one.
 */
export const BIG_READ_IDLE_MS = 100;

const bigHolders = new Set<BigReads>();

/**
 * The buffer of the reads of connections that are not streaming (their last read brought less
 * than 32 KiB: replies, the end of a download), copied out in the read's own
 * callback (one read runs at a time on the event loop, so they can share it): a pooled
 * connection waiting for its next reply holds no buffer (a gateway keeps up to 512 connections
 * per storage).
 */
let sharedReads: Buffer | null = null;

/** Connections reading big now (tests). */
export const bigReadersNow = (): number => bigHolders.size;

/**
 * Socket reads (net's `onread`), each chunk handed to `deliver`. A connection reads
 * `READ_BYTES` at a time while its last read filled its buffer (more is waiting in the kernel),
 * its reader keeps up (`keepingUp`: no chunk waits) and it holds one of the `MAX_BIG_READERS`
 * places; else `SLOW_READ_BYTES`: into a buffer of its own while it streams (its last read
 * brought at least 32 KiB), into the process's shared buffer otherwise. A read that
 * filled at least half of its own buffer takes the buffer with it (a fresh one is made for the
 * next read); any other read is copied out, so a kept chunk never holds more than twice its
 * size.
 */
export class BigReads {
  deliver: (c: Uint8Array) => void = (c) => {
    this.#early.push(c);
  };
  /** Whether the reader takes chunks as they come (none are waiting). */
  keepingUp: () => boolean = () => true;
  readonly #early: Uint8Array[] = [];
  #buf: Buffer | null = null;
  #big = false;
  #lastFull = false;
  /** The last read brought at least 32 KiB: the next one gets a buffer of its own. */
  #streaming = false;
  #lastRead = 0;

  readonly options = {
    buffer: (): Buffer => {
      const want = this.#lastFull && this.keepingUp();
      if (want && !this.#big) this.#takePlace();
      else if (!want) this.release();
      const size = this.#big ? READ_BYTES : this.#streaming ? SLOW_READ_BYTES : 0;
      if (size === 0) {
        this.#buf = null;
        sharedReads ??= Buffer.allocUnsafeSlow(SLOW_READ_BYTES);
        return sharedReads;
      }
      if (this.#buf?.length !== size) this.#buf = Buffer.allocUnsafeSlow(size);
      return this.#buf;
    },
    callback: (n: number, b: Uint8Array): boolean => {
      this.#lastFull = n === b.length;
      this.#streaming = n >= SLOW_READ_BYTES / 2;
      this.#lastRead = performance.now();
      let c: Uint8Array;
      if (b === this.#buf && n >= b.length / 2) {
        c = b.subarray(0, n);
        this.#buf = null;
      } else {
        c = Buffer.from(b.subarray(0, n));
      }
      this.deliver(c);
      return true;
    },
  };

  #takePlace(): void {
    if (bigHolders.size >= MAX_BIG_READERS) {
      const now = performance.now();
      for (const h of bigHolders) {
        if (now - h.#lastRead > BIG_READ_IDLE_MS) {
          h.release();
          break;
        }
      }
    }
    if (bigHolders.size >= MAX_BIG_READERS) return;
    this.#big = true;
    bigHolders.add(this);
  }

  /** Gives the connection's big-read place back (it lags, it idles, or it closed). */
  release(): void {
    if (!this.#big) return;
    this.#big = false;
    bigHolders.delete(this);
  }

  /** Chunks read before a consumer was set. */
  takeEarly(): Uint8Array[] {
    return this.#early.splice(0);
  }
}

/**
 * A ByteSocket over a connected `net.Socket`. `first`: bytes already read from it (a proxy's
 * handshake may read past its own reply), handed out before anything else. `reads`: the
 * socket's `onread` reads (BigReads), else its 'data' events.
 */
export class NodeByteSocket implements ByteSocket {
  readonly #s: Socket;
  readonly #queue: Uint8Array[] = [];
  #queued = 0;
  #waiter: { resolve: (c: Uint8Array | null) => void; reject: (e: Error) => void } | null = null;
  #ended = false;
  #error: Error | null = null;

  constructor(s: Socket, first?: Uint8Array, reads?: BigReads) {
    this.#s = s;
    if (first?.length) this.#take(first);
    if (reads) {
      for (const c of reads.takeEarly()) this.#take(c);
      reads.deliver = (c) => this.#take(c);
      reads.keepingUp = () => this.#queue.length === 0;
    } else {
      s.on('data', (c: Buffer) => this.#take(c));
    }
    s.on('end', () => {
      this.#ended = true;
      this.#wake();
    });
    s.on('close', () => {
      this.#ended = true;
      reads?.release();
      this.#wake();
    });
    s.on('error', (e) => {
      this.#error = new DsmError(ErrorCode.SOCKET, `socket error: ${e.message}`, undefined, { cause: e });
      this.#wake();
    });
    // a socket that was paused (by a handshake) flows again: reads are paced by the queue
    if (s.isPaused() && this.#queued < HIGH_WATER_BYTES) s.resume();
  }

  #take(c: Uint8Array): void {
    if (this.#waiter) {
      const w = this.#waiter;
      this.#waiter = null;
      w.resolve(c);
      return;
    }
    this.#queue.push(c);
    this.#queued += c.length;
    if (this.#queued >= HIGH_WATER_BYTES) this.#s.pause();
  }

  #wake(): void {
    if (!this.#waiter) return;
    const w = this.#waiter;
    this.#waiter = null;
    if (this.#error) w.reject(this.#error);
    else w.resolve(null);
  }

  /** Bytes Node has read from the socket so far (handed out or queued). */
  get bytesRead(): number {
    return this.#s.bytesRead;
  }

  get closed(): boolean {
    return this.#s.destroyed || this.#ended;
  }

  read(): Promise<Uint8Array | null> {
    const c = this.#queue.shift();
    if (c) {
      this.#queued -= c.length;
      if (this.#queued < HIGH_WATER_BYTES / 2 && this.#s.isPaused()) this.#s.resume();
      return Promise.resolve(c);
    }
    if (this.#error) return Promise.reject(this.#error);
    if (this.#ended) return Promise.resolve(null);
    if (this.#s.isPaused()) this.#s.resume();
    return new Promise((resolve, reject) => {
      this.#waiter = { resolve, reject };
    });
  }

  write(bytes: Uint8Array): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.#s.destroyed) {
        reject(new DsmError(ErrorCode.SOCKET, 'socket closed'));
        return;
      }
      if (this.#s.write(bytes)) {
        resolve();
        return;
      }
      const onDrain = () => {
        this.#s.off('close', onClose);
        resolve();
      };
      const onClose = () => {
        this.#s.off('drain', onDrain);
        reject(this.#error ?? new DsmError(ErrorCode.SOCKET, 'socket closed while writing'));
      };
      this.#s.once('drain', onDrain);
      this.#s.once('close', onClose);
    });
  }

  close(): void {
    this.#s.end();
    setTimeout(() => this.#s.destroy(), 1000).unref();
  }

  destroy(): void {
    this.#s.destroy();
  }
}

export interface NodeTransportOptions {
  /**
   * TLS to the nodes: `ca` (PEM) is the authority that signed their certificates (default: the
   * system's); `servername` the name to check in them (default: the host, unless it is an IP
   * address, which is then checked against the certificate's IP entries).
   */
  tls?: { ca?: string | Uint8Array; servername?: string };
}

/** A Node `Transport`: plain TCP, or TLS when `opts.tls` is given. */
export function createNodeTransport(opts: NodeTransportOptions = {}): Transport {
  return { connect: (host, port, c) => connectNode(host, port, c, opts), sha256 };
}

function connectNode(
  host: string,
  port: number,
  opts: ConnectOptions,
  t: NodeTransportOptions,
): Promise<ByteSocket> {
  return new Promise((resolve, reject) => {
    const tls = t.tls;
    let s: Socket;
    const reads = tls ? undefined : new BigReads();
    const onReady = () => {
      clearTimeout(timer);
      s.removeAllListeners('error');
      resolve(new NodeByteSocket(s, undefined, reads));
    };
    if (tls) {
      s = tlsConnect(
        {
          host,
          port,
          ca: typeof tls.ca === 'string' || !tls.ca ? tls.ca : Buffer.from(tls.ca),
          servername: tls.servername ?? (isIP(host) ? undefined : host),
        },
        onReady,
      );
      s.setNoDelay(true);
      s.setKeepAlive(true);
    } else {
      s = netConnect({ host, port, noDelay: true, keepAlive: true, onread: reads?.options }, onReady);
    }
    const timer = setTimeout(() => {
      s.destroy();
      reject(
        new DsmError(ErrorCode.CONNECT, `connect to ${host}:${port} timed out after ${opts.timeoutMs} ms`),
      );
    }, opts.timeoutMs);
    s.once('error', (e) => {
      clearTimeout(timer);
      reject(
        new DsmError(ErrorCode.CONNECT, `cannot connect to ${host}:${port}: ${e.message}`, undefined, {
          cause: e,
        }),
      );
    });
  });
}

function sha256(): Sha256Hasher {
  const h = createHash('sha256');
  return {
    update(bytes) {
      h.update(bytes);
    },
    digest: () => new Uint8Array(h.digest()),
  };
}

/** Plain TCP (the default of every client). */
export const nodeTransport: Transport = createNodeTransport();
