// Types of the one Workers runtime module the project imports (shared/client's
// workers-transport.ts, bundled into the Worker by wrangler). Declared here rather than with
// @cloudflare/workers-types, whose globals clash with @types/node in this single-program repo.
declare module 'cloudflare:sockets' {
  export interface SocketAddress {
    hostname: string;
    port: number;
  }
  export interface SocketOptions {
    secureTransport?: 'off' | 'on' | 'starttls';
    allowHalfOpen?: boolean;
    highWaterMark?: number | bigint;
  }
  export interface SocketInfo {
    remoteAddress?: string;
    localAddress?: string;
  }
  export interface Socket {
    readonly readable: ReadableStream<Uint8Array>;
    readonly writable: WritableStream<Uint8Array>;
    readonly opened: Promise<SocketInfo>;
    readonly closed: Promise<void>;
    close(): Promise<void>;
    startTls(): Socket;
  }
  export function connect(address: string | SocketAddress, options?: SocketOptions): Socket;
}
