/**
 * Helpers for the id server tests (not exported by the package): database backends, raw
 * sockets and a TCP proxy that can be switched off to simulate a database outage.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger } from '@dsm/common';
import { decodeHeader, HEADER_LENGTH } from '@dsm/packets';
import { createConnection } from 'mysql2/promise';
import { configSchema, type IdConfig } from './config.ts';
import { type IdServer, type StartIdServerOptions, startIdServer } from './id-server.ts';

export const MYSQL_SERVER = process.env.DSM_TEST_MYSQL_URL ?? 'mysql://root@127.0.0.1:3306';
export const TEST_HOSTNAME = 'id-test';

export type BackendName = 'sqlite' | 'mysql';

/** A place for test databases; `url(name)` gives a fresh database per name. */
export interface Backend {
  name: BackendName;
  setup(): Promise<void>;
  url(name: string): string;
  cleanup(): Promise<void>;
}

const rand = () => randomBytes(5).toString('hex');

export function sqliteBackend(): Backend {
  let dir = '';
  return {
    name: 'sqlite',
    async setup() {
      dir = mkdtempSync(join(tmpdir(), 'dsm-id-test-'));
    },
    url: (name) => `sqlite:${join(dir, `${name}.db`)}`,
    async cleanup() {
      if (dir) rmSync(dir, { recursive: true, force: true });
    },
  };
}

function mysqlAdmin() {
  const u = new URL(MYSQL_SERVER);
  return createConnection({
    host: u.hostname,
    port: Number(u.port || 3306),
    user: decodeURIComponent(u.username),
    password: decodeURIComponent(u.password),
    connectTimeout: 5000,
  });
}

export function mysqlBackend(): Backend {
  const prefix = `dsm_t_${rand()}`;
  const created = new Set<string>();
  return {
    name: 'mysql',
    async setup() {
      try {
        const c = await mysqlAdmin();
        await c.query('SELECT 1');
        await c.end();
      } catch (e) {
        throw new Error(
          `MariaDB/MySQL is required for the id server tests but ${MYSQL_SERVER} is unreachable ` +
            `(${(e as Error).message}); start it or set DSM_TEST_MYSQL_URL`,
        );
      }
    },
    url(name) {
      const db = `${prefix}_${name}`;
      created.add(db);
      return `${MYSQL_SERVER.replace(/\/+$/, '')}/${db}`;
    },
    async cleanup() {
      if (created.size === 0) return;
      const c = await mysqlAdmin();
      try {
        for (const db of created) await c.query(`DROP DATABASE IF EXISTS \`${db}\``);
      } finally {
        await c.end();
      }
    },
  };
}

export const BACKENDS: [BackendName, () => Backend][] = [
  ['sqlite', sqliteBackend],
  ['mysql', mysqlBackend],
];

export const testLog = createLogger('id-test');

export function testConfig(database: string, extra: Partial<IdConfig> = {}): IdConfig {
  return configSchema.parse({ listen: '127.0.0.1:0', hostname: TEST_HOSTNAME, database, ...extra });
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
 * also waits (up to 2 s) for the server to close the connection.
 */
export function rawExchange(port: number, bytes: Uint8Array, waitClose = false): Promise<RawReply> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1');
    let buf = Buffer.alloc(0);
    let frame: Uint8Array | null = null;
    let done = false;
    const finish = (closed: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      resolve({ frame: frame ?? new Uint8Array(buf), closed });
    };
    const timer = setTimeout(() => {
      if (frame) finish(false);
      else {
        done = true;
        s.destroy();
        reject(new Error(`no reply within 5 s (got ${buf.length} bytes)`));
      }
    }, 5000);
    s.on('data', (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      if (!frame && buf.length >= HEADER_LENGTH) {
        const n = HEADER_LENGTH + decodeHeader(buf).bodyLength;
        if (buf.length >= n) {
          frame = new Uint8Array(buf.subarray(0, n));
          if (!waitClose) finish(false);
          else timer.refresh();
        }
      }
    });
    s.on('close', () => finish(true));
    s.on('error', (e) => {
      if (!frame && !done) {
        done = true;
        clearTimeout(timer);
        reject(e);
      }
    });
    s.write(bytes);
  });
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
