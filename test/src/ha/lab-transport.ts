import { connect, type Socket } from 'node:net';
import type { ByteSocket, ConnectOptions, Transport } from '@dsm/client';
import { DsmError, ErrorCode } from '@dsm/common/errors';

const HIGH_WATER_CHUNKS = 16;

/** A ByteSocket over a connection already set up through the lab's connect proxy. */
class ProxiedSocket implements ByteSocket {
  readonly #s: Socket;
  readonly #queue: Uint8Array[] = [];
  #waiter: { resolve: (c: Uint8Array | null) => void; reject: (e: Error) => void } | null = null;
  #ended = false;
  #error: Error | null = null;

  constructor(s: Socket, first: Buffer) {
    this.#s = s;
    if (first.length) this.#queue.push(first);
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
    const end = () => {
      this.#ended = true;
      this.#wake();
    };
    s.on('end', end);
    s.on('close', end);
    s.on('error', (e) => {
      this.#error = new DsmError(ErrorCode.SOCKET, `socket error: ${e.message}`, undefined, { cause: e });
      this.#wake();
    });
    s.resume();
  }

  #wake(): void {
    if (!this.#waiter) return;
    const w = this.#waiter;
    this.#waiter = null;
    if (this.#error) w.reject(this.#error);
    else w.resolve(null);
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

/**
 * A Transport whose TCP connections are made from inside a lab namespace by
 * infra/ha/scripts/ns-tcp-proxy.mjs (listening on `socketPath`): the test process itself has
 * no route to 10.213.0.0/24. A refused/unreachable address is a CONNECT error, as with
 * nodeTransport.
 */
export function labTransport(socketPath: string): Transport {
  return {
    connect(host: string, port: number, opts: ConnectOptions): Promise<ByteSocket> {
      return new Promise((resolve, reject) => {
        const s = connect({ path: socketPath });
        let head = Buffer.alloc(0);
        let done = false;
        const fail = (why: string) => {
          if (done) return;
          done = true;
          clearTimeout(timer);
          s.destroy();
          reject(new DsmError(ErrorCode.CONNECT, `cannot connect to ${host}:${port}: ${why}`));
        };
        const timer = setTimeout(() => fail(`timed out after ${opts.timeoutMs} ms`), opts.timeoutMs + 200);
        s.once('connect', () => s.write(`${host} ${port} ${opts.timeoutMs}\n`));
        const onData = (c: Buffer) => {
          head = Buffer.concat([head, c]);
          if (head[0] === 1) {
            done = true;
            clearTimeout(timer);
            s.off('data', onData);
            s.off('end', onEnd);
            s.removeAllListeners('error');
            s.pause();
            resolve(new ProxiedSocket(s, head.subarray(1)));
          }
        };
        const onEnd = () => fail(head.subarray(1).toString() || 'closed by the lab proxy');
        s.on('data', onData);
        s.once('end', onEnd);
        s.once('close', onEnd);
        s.on('error', (e) => fail(`lab proxy: ${e.message}`));
      });
    },
  };
}
