/**
 * Helpers for the id server tests (not exported by the package): the backends to loop over,
 * servers stopped at the end, one-shot raw exchanges and a TCP proxy that can be switched off
 * to simulate a database outage. Generic test support is in @dsm/testkit.
 */
import { connect, createServer, type Server, type Socket } from 'node:net';
import { createLogger } from '@dsm/common';
import { type Backend, mariadbBackend, RawConn, sqliteBackend } from '@dsm/testkit';
import { configSchema, type IdConfig } from './config.ts';
import { type IdServer, type StartIdServerOptions, startIdServer } from './id-server.ts';

export const TEST_HOSTNAME = 'id-test';

/** The database backends, as [title, factory]: SQLite files, or fresh MariaDB databases. */
export const BACKENDS: [string, () => Backend][] = [
  ['sqlite', sqliteBackend],
  ['mysql', () => mariadbBackend({ redis: false })],
];

export const testLog = createLogger('id-test');

/** Any key is served (these tests are about allocation; `keyPatterns` has its own test). */
export function testConfig(database: string, extra: Partial<IdConfig> = {}): IdConfig {
  return configSchema.parse({
    listen: '127.0.0.1:0',
    hostname: TEST_HOSTNAME,
    database,
    keyPatterns: ['.*'],
    ...extra,
  });
}

/** Starts servers and stops them all at the end of the suite. */
export class ServerSet {
  readonly #servers = new Set<IdServer>();

  async start(config: IdConfig, opts: StartIdServerOptions = {}): Promise<IdServer> {
    const s = await startIdServer(config, { log: testLog, ...opts });
    this.#servers.add(s);
    return s;
  }

  async stop(s: IdServer): Promise<void> {
    this.#servers.delete(s);
    await s.close();
  }

  async stopAll(): Promise<void> {
    const all = [...this.#servers];
    this.#servers.clear();
    await Promise.all(all.map((s) => s.close()));
  }
}

export interface RawReply {
  /** The first whole frame the server sent (header + body), or what arrived before close. */
  frame: Uint8Array;
  /** The server closed the connection after the reply. */
  closed: boolean;
}

/**
 * Sends `bytes` on a new TCP connection and reads one reply frame. When `waitClose` is set,
 * also waits (up to 5 s) for the server to close the connection.
 */
export async function rawExchange(port: number, bytes: Uint8Array, waitClose = false): Promise<RawReply> {
  const c = await RawConn.open(port);
  try {
    c.send(bytes);
    const f = await c.readFrame();
    if (!f) {
      if (!c.isClosed) throw new Error(`no reply within 5 s (got ${c.pending.length} bytes)`);
      return { frame: new Uint8Array(c.pending), closed: true };
    }
    const frame = new Uint8Array(f.frame);
    return { frame, closed: waitClose ? await c.closedWithin(5000) : false };
  } finally {
    c.close();
  }
}

/** A TCP forwarder to `target`; `down()` drops every connection and refuses new ones. */
export class ToggleProxy {
  readonly #target: { host: string; port: number };
  readonly #sockets = new Set<Socket>();
  #server: Server | null = null;
  port = 0;

  constructor(target: { host: string; port: number }) {
    this.#target = target;
  }

  async up(): Promise<void> {
    const server = createServer((client) => {
      const upstream = connect(this.#target.port, this.#target.host);
      for (const s of [client, upstream]) {
        this.#sockets.add(s);
        s.on('close', () => this.#sockets.delete(s));
        s.on('error', () => {
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream);
      upstream.pipe(client);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, '127.0.0.1', () => resolve());
    });
    this.port = (server.address() as { port: number }).port;
    this.#server = server;
  }

  async down(): Promise<void> {
    const server = this.#server;
    this.#server = null;
    for (const s of this.#sockets) s.destroy();
    this.#sockets.clear();
    if (server) await new Promise<void>((r) => server.close(() => r()));
  }
}
