/**
 * The byte pipe under every protocol client. Node uses `net` (node-transport.ts); the Worker
 * gateway uses `cloudflare:sockets`. Nothing above this interface touches a runtime API.
 */
export interface ByteSocket {
  /** Resolves when the bytes are handed to the OS (with backpressure). */
  write(bytes: Uint8Array): Promise<void>;
  /** Next chunk, or null at end of stream. */
  read(): Promise<Uint8Array | null>;
  /** Closes gracefully. */
  close(): void;
  /** Tears down at once (timeouts, protocol errors). */
  destroy(): void;
  readonly closed: boolean;
}

export interface ConnectOptions {
  timeoutMs: number;
}

/** An incremental SHA-256 (the runtime's own, e.g. node:crypto). */
export interface Sha256Hasher {
  update(bytes: Uint8Array): void;
  digest(): Uint8Array;
}

export interface Transport {
  connect(host: string, port: number, opts: ConnectOptions): Promise<ByteSocket>;
  /**
   * The runtime's incremental SHA-256, when it has one. DsmClient hashes what it sends under a
   * caller's `freshFileId` with it to recognise its own upload after a lost reply (an id it made
   * itself needs no hash); without it, that check compares sizes only.
   */
  sha256?(): Sha256Hasher;
}
