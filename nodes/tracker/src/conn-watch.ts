import dc from 'node:diagnostics_channel';
import type { Socket } from 'node:net';

/** Identifies a live connection: the peer's address and port (as ProtocolServer reports them). */
export function connKey(remoteAddress: string, remotePort: number): string {
  return `${normalizeAddress(remoteAddress)}|${remotePort}`;
}

function normalizeAddress(a: string): string {
  return a.startsWith('::ffff:') ? a.slice(7) : a;
}

const CHANNEL = 'net.server.socket';
/** How long a closed connection is remembered (for a request read before its close was seen). */
const REMEMBER_CLOSED_MS = 60_000;

/**
 * Reports when a connection accepted on one local port closes. `ProtocolServer` has no
 * connection-close hook, so accepted sockets are observed through Node's `net.server.socket`
 * diagnostics channel (published for every accepted TCP connection, synchronously, before any
 * data is read) and filtered by the local port.
 */
export class ConnectionWatch {
  readonly #onClose: (key: string) => void;
  readonly #closed = new Map<string, number>();
  #port = -1;
  #subscribed = false;

  constructor(onClose: (key: string) => void) {
    this.#onClose = onClose;
  }

  readonly #listener = (message: unknown): void => {
    const socket = (message as { socket?: Socket }).socket;
    if (!socket || socket.localPort !== this.#port) return;
    const key = connKey(socket.remoteAddress ?? '', socket.remotePort ?? 0);
    this.#closed.delete(key);
    socket.once('close', () => {
      const now = Date.now();
      for (const [k, t] of this.#closed) if (now - t > REMEMBER_CLOSED_MS) this.#closed.delete(k);
      this.#closed.set(key, now);
      this.#onClose(key);
    });
  };

  /** Starts watching the connections accepted on `port`. */
  start(port: number): void {
    this.#port = port;
    if (!this.#subscribed) {
      dc.subscribe(CHANNEL, this.#listener);
      this.#subscribed = true;
    }
  }

  /** True when the connection is known to have closed (recently). */
  isClosed(key: string): boolean {
    return this.#closed.has(key);
  }

  stop(): void {
    if (this.#subscribed) dc.unsubscribe(CHANNEL, this.#listener);
    this.#subscribed = false;
    this.#closed.clear();
  }
}
