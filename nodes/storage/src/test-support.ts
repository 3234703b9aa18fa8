/**
 * Helpers for this package's tests (not exported): database/cache backends with unique names,
 * a raw TCP frame client, an in-memory id source.
 */
import { randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { decodeHeader, HEADER_LENGTH, type Header } from '@dsm/packets';
import { Redis } from 'ioredis';
import { createConnection } from 'mysql2/promise';

export const MYSQL_SERVER = process.env.DSM_TEST_MYSQL_URL ?? 'mysql://root@127.0.0.1:3306';
export const REDIS_URL = process.env.DSM_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379/0';

export const rand = () => randomBytes(5).toString('hex');

export interface Backend {
  name: string;
  /** Checks the services are there (a missing one fails the suite with a clear message). */
  setup(): Promise<void>;
  /** A fresh database URL (unique per call). */
  database(): string;
  cache: string;
  cachePrefix?: string;
  cleanup(): Promise<void>;
}

export function sqliteMemory(dir: () => string): Backend {
  return {
    name: 'sqlite+memory',
    async setup() {},
    database: () => `sqlite:${join(dir(), `meta-${rand()}.db`)}`,
    cache: 'memory:',
    async cleanup() {},
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

export function mariaRedis(): Backend {
  const created = new Set<string>();
  const prefix = `dsm_t_${rand()}:`;
  return {
    name: 'mariadb+redis',
    async setup() {
      try {
        const c = await mysqlAdmin();
        await c.query('SELECT 1');
        await c.end();
      } catch (e) {
        throw new Error(
          `MariaDB/MySQL is required for this test but ${MYSQL_SERVER} is unreachable (${(e as Error).message}); ` +
            'start it or set DSM_TEST_MYSQL_URL',
        );
      }
      const r = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1, connectTimeout: 2000 });
      r.on('error', () => {});
      try {
        await r.connect();
        await r.ping();
      } catch (e) {
        throw new Error(
          `Redis is required for this test but ${REDIS_URL} is unreachable (${(e as Error).message}); ` +
            'start it or set DSM_TEST_REDIS_URL',
        );
      } finally {
        r.disconnect();
      }
    },
    database() {
      const name = `dsm_t_${rand()}`;
      created.add(name);
      return `${MYSQL_SERVER.replace(/\/+$/, '')}/${name}`;
    },
    cache: REDIS_URL,
    cachePrefix: prefix,
    async cleanup() {
      if (created.size > 0) {
        const c = await mysqlAdmin();
        try {
          for (const d of created) await c.query(`DROP DATABASE IF EXISTS \`${d}\``);
        } finally {
          await c.end();
        }
      }
      const r = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1, connectTimeout: 2000 });
      r.on('error', () => {});
      try {
        await r.connect();
        let cursor = '0';
        do {
          const [next, keys] = await r.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500);
          cursor = next;
          if (keys.length > 0) await r.del(...keys);
        } while (cursor !== '0');
      } finally {
        r.disconnect();
      }
    },
  };
}

/** An id source like one id server: a counter per key. */
export function idStub(start = 114_700): {
  source: (key: string) => Promise<number>;
  keys: Map<string, number>;
} {
  const keys = new Map<string, number>();
  return {
    keys,
    source: async (key) => {
      const n = keys.get(key) ?? start;
      keys.set(key, n + 1);
      return n;
    },
  };
}

export interface RawFrame {
  header: Header;
  body: Buffer;
  frame: Buffer;
}

/** A bare TCP connection reading whole frames, for byte-level tests. */
export class RawConn {
  readonly socket: Socket;
  #buf = Buffer.alloc(0);
  #closed = false;
  #wake: (() => void) | null = null;

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (c: Buffer) => {
      this.#buf = Buffer.concat([this.#buf, c]);
      this.#notify();
    });
    const end = () => {
      this.#closed = true;
      this.#notify();
    };
    socket.on('end', end);
    socket.on('close', end);
    socket.on('error', end); // ECONNRESET after an early error reply is expected
  }

  static open(port: number): Promise<RawConn> {
    return new Promise((resolve, reject) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => resolve(new RawConn(s)));
      s.once('error', reject);
    });
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = null;
    w?.();
  }

  get closed(): boolean {
    return this.#closed;
  }

  write(b: Uint8Array): Promise<void> {
    return new Promise((resolve, reject) => this.socket.write(b, (e) => (e ? reject(e) : resolve())));
  }

  async #until(pred: () => boolean, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!pred()) {
      if (this.#closed) return;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('timed out waiting for the server');
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.#wake = () => {
          clearTimeout(t);
          r();
        };
      });
    }
  }

  /** The next whole frame, or null when the server closed first. */
  async readFrame(timeoutMs = 5000): Promise<RawFrame | null> {
    await this.#until(() => this.#frameLength() !== null, timeoutMs);
    const n = this.#frameLength();
    if (n === null) return null;
    const frame = this.#buf.subarray(0, n);
    this.#buf = this.#buf.subarray(n);
    return { header: decodeHeader(frame), body: frame.subarray(HEADER_LENGTH), frame };
  }

  /** Resolves true when the server closes the connection within `timeoutMs` with nothing more sent. */
  async waitClosed(timeoutMs = 3000): Promise<{ closed: boolean; extra: number }> {
    await this.#until(() => false, timeoutMs).catch(() => {});
    return { closed: this.#closed, extra: this.#buf.length };
  }

  #frameLength(): number | null {
    if (this.#buf.length < HEADER_LENGTH) return null;
    const len = Number(this.#buf.readBigInt64BE(0));
    const n = HEADER_LENGTH + len;
    return this.#buf.length >= n ? n : null;
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** Polls `pred` until true (or fails after `timeoutMs`). */
export async function eventually(
  pred: () => Promise<boolean> | boolean,
  timeoutMs = 5000,
  what = 'condition',
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await pred()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
