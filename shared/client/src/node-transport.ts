import { createHash } from 'node:crypto';
import { isIP, connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { DsmError, ErrorCode } from '@dsm/common/errors';
import type { ByteSocket, ConnectOptions, Sha256Hasher, Transport } from './transport.ts';

/**
 * Chunks (a read's, up to 64 KiB) buffered before the socket is paused (backpressure towards
 * the server). 4: a gateway streaming to 50 slow clients held up to 16 per storage connection
 * (1 MiB each, 50 MiB in all: its RSS peak went 177-188 → 154 MiB with 4, curl clients at
 * 4 MiB/s), and a single fast stream is as fast with 4 (the kernel's socket buffer is the rest
 * of the read-ahead).
 */
export const HIGH_WATER_CHUNKS = 4;

/**
 * A ByteSocket over a connected `net.Socket`. `first`: bytes already read from it (a proxy's
 * handshake may read past its own reply), handed out before anything else.
 */
export class NodeByteSocket implements ByteSocket {
  readonly #s: Socket;
  readonly #queue: Uint8Array[] = [];
  #waiter: { resolve: (c: Uint8Array | null) => void; reject: (e: Error) => void } | null = null;
  #ended = false;
  #error: Error | null = null;

  constructor(s: Socket, first?: Uint8Array) {
    this.#s = s;
    if (first?.length) this.#queue.push(first);
    s.on('data', (c: Buffer) => {
      if (this.#waiter) {
        const w = this.#waiter;
        this.#waiter = null;
        w.resolve(c);
        return;
      }
      this.#queue.push(c);
      if (this.#queue.length >= HIGH_WATER_CHUNKS) s.pause();
    });
    s.on('end', () => {
      this.#ended = true;
      this.#wake();
    });
    s.on('close', () => {
      this.#ended = true;
      this.#wake();
    });
    s.on('error', (e) => {
      this.#error = new DsmError(ErrorCode.SOCKET, `socket error: ${e.message}`, undefined, { cause: e });
      this.#wake();
    });
    // a socket that was paused (by a handshake) flows again: reads are paced by the queue
    if (s.isPaused()) s.resume();
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
      if (this.#queue.length < HIGH_WATER_CHUNKS / 2 && this.#s.isPaused()) this.#s.resume();
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
    const onReady = () => {
      clearTimeout(timer);
      s.removeAllListeners('error');
      resolve(new NodeByteSocket(s));
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
      s = netConnect({ host, port, noDelay: true, keepAlive: true }, onReady);
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
