import { connect as cfConnect } from 'cloudflare:sockets';
import { DsmError, ErrorCode, messageOf } from '@dsm/common/errors';
import type { ByteSocket, ConnectOptions, Transport } from './transport.ts';

/**
 * The `Transport` of Cloudflare Workers: TCP through `connect()` from `cloudflare:sockets`
 * (the Worker gateway's way to the trackers and storages).
 *
 * Workers bind every socket to the request that opened it: a socket (so a pooled connection)
 * must not be used by another request. Give each request its own `DsmClient` and close it when
 * the response is done (gateway/src/worker.ts does).
 */

/** The part of a `cloudflare:sockets` Socket used here. */
export interface CfSocket {
  readonly readable: ReadableStream<Uint8Array>;
  readonly writable: WritableStream<Uint8Array>;
  readonly opened: Promise<unknown>;
  readonly closed: Promise<void>;
  close(): Promise<void>;
}

export type CfConnect = (
  address: { hostname: string; port: number },
  options?: { secureTransport?: 'off' | 'on' | 'starttls'; allowHalfOpen?: boolean },
) => CfSocket;

class WorkersByteSocket implements ByteSocket {
  readonly #s: CfSocket;
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>;
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  readonly #address: string;
  #closed = false;

  constructor(s: CfSocket, address: string) {
    this.#s = s;
    this.#address = address;
    this.#reader = s.readable.getReader();
    this.#writer = s.writable.getWriter();
    s.closed.then(
      () => {
        this.#closed = true;
      },
      () => {
        this.#closed = true;
      },
    );
  }

  get closed(): boolean {
    return this.#closed;
  }

  async write(bytes: Uint8Array): Promise<void> {
    if (this.#closed) throw new DsmError(ErrorCode.SOCKET, 'socket closed');
    try {
      // ready = the socket took the previous bytes (backpressure); write = these are handed over
      await this.#writer.ready;
      await this.#writer.write(bytes);
    } catch (e) {
      this.destroy();
      throw new DsmError(ErrorCode.SOCKET, `write to ${this.#address} failed: ${messageOf(e)}`, undefined, {
        cause: e,
      });
    }
  }

  async read(): Promise<Uint8Array | null> {
    if (this.#closed) return null;
    let r: ReadableStreamReadResult<Uint8Array>;
    try {
      r = await this.#reader.read();
    } catch (e) {
      if (this.#closed) return null;
      this.destroy();
      throw new DsmError(ErrorCode.SOCKET, `read from ${this.#address} failed: ${messageOf(e)}`, undefined, {
        cause: e,
      });
    }
    if (r.done) {
      this.#closed = true;
      return null;
    }
    return r.value;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#writer.close().catch(() => {});
    this.#s.close().catch(() => {});
  }

  destroy(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#reader.cancel().catch(() => {});
    this.#s.close().catch(() => {});
  }
}

export interface SocketsTransportOptions {
  /** `'on'`: TLS to the nodes (their listeners have `tls.certFile`); default `'off'`. */
  secureTransport?: 'off' | 'on';
}

/** A Transport over any `connect()` with the `cloudflare:sockets` shape (tests can pass a fake). */
export function socketsTransport(connect: CfConnect, options: SocketsTransportOptions = {}): Transport {
  const secureTransport = options.secureTransport ?? 'off';
  return {
    async connect(host: string, port: number, opts: ConnectOptions): Promise<ByteSocket> {
      const address = `${host}:${port}`;
      let s: CfSocket;
      try {
        s = connect({ hostname: host, port }, { secureTransport, allowHalfOpen: false });
      } catch (e) {
        throw new DsmError(ErrorCode.CONNECT, `cannot connect to ${address}: ${messageOf(e)}`, undefined, {
          cause: e,
        });
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () =>
            reject(
              new DsmError(ErrorCode.CONNECT, `connect to ${address} timed out after ${opts.timeoutMs} ms`),
            ),
          opts.timeoutMs,
        );
      });
      try {
        await Promise.race([s.opened, timeout]);
      } catch (e) {
        s.close().catch(() => {});
        if (e instanceof DsmError) throw e;
        throw new DsmError(ErrorCode.CONNECT, `cannot connect to ${address}: ${messageOf(e)}`, undefined, {
          cause: e,
        });
      } finally {
        clearTimeout(timer);
      }
      return new WorkersByteSocket(s, address);
    },
  };
}

/** TCP from a Cloudflare Worker (or workerd / Miniflare) to the cluster. */
export const workersTransport: Transport = socketsTransport(cfConnect as CfConnect);

/** TLS from a Worker to the cluster (`secureTransport: 'on'`). */
export const workersTlsTransport: Transport = socketsTransport(cfConnect as CfConnect, {
  secureTransport: 'on',
});
