/** Test helpers (not exported by the package): backends, raw protocol sockets, fake storages. */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createLogger } from '@dsm/common';
import {
  Command,
  decodeErrorReply,
  encodeAddrsRequest,
  encodeBeatExt,
  encodeFrame,
  encodeJoinExt,
  type FrameEvent,
  FrameReader,
  fromHex,
  type Header,
  PROTOCOL_VERSION,
  Status,
} from '@dsm/packets';
import { Redis } from 'ioredis';
import mysql from 'mysql2/promise';
import type { TrackerConfigInput } from './config.ts';
import { type RunningTracker, startTracker } from './tracker.ts';

export const MYSQL_SERVER = { host: '127.0.0.1', port: 3306, user: 'root' };
export const REDIS_URL = 'redis://127.0.0.1:6379';

export type BackendName = 'sqlite+memory' | 'mariadb+redis';
export const BACKENDS: BackendName[] = ['sqlite+memory', 'mariadb+redis'];

export const log = createLogger('tracker-test');

/** One backend: a fresh database (and Redis key prefix), removed by cleanup(). */
export interface Backend {
  name: BackendName;
  database: string;
  cache: string;
  cachePrefix: string;
  /** Starts a tracker on this backend (port 0), stopped by cleanup(). */
  start(config?: TrackerConfigInput): Promise<RunningTracker>;
  /** Rows of t_router for a user (to check there is exactly one). */
  routerRows(appId: string, userId: string): Promise<{ group_name: string | null }[]>;
  cleanup(): Promise<void>;
}

async function mysqlAdmin(): Promise<mysql.Connection> {
  try {
    return await mysql.createConnection({ ...MYSQL_SERVER, connectTimeout: 3000 });
  } catch (e) {
    throw new Error(
      `MariaDB is required at ${MYSQL_SERVER.host}:${MYSQL_SERVER.port} (user root, no password) and does not ` +
        `answer: ${(e as Error).message}. Start it and run the tests again.`,
    );
  }
}

async function redisAdmin(): Promise<Redis> {
  const r = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1, connectTimeout: 2000 });
  r.on('error', () => {});
  try {
    await r.connect();
    await r.ping();
  } catch (e) {
    r.disconnect();
    throw new Error(`Redis is required at ${REDIS_URL} and does not answer: ${(e as Error).message}`);
  }
  return r;
}

export async function createBackend(name: BackendName): Promise<Backend> {
  const tag = `dsm_t_${randomBytes(5).toString('hex')}`;
  const trackers: RunningTracker[] = [];
  let database: string;
  let cache: string;
  let cleanupStore: () => Promise<void>;
  let dir = '';
  let admin: mysql.Connection | null = null;
  if (name === 'sqlite+memory') {
    dir = mkdtempSync(join(tmpdir(), 'dsm-tracker-test-'));
    database = `sqlite:${join(dir, 'tracker.db')}`;
    cache = 'memory:';
    cleanupStore = async () => rmSync(dir, { recursive: true, force: true });
  } else {
    admin = await mysqlAdmin();
    const redis = await redisAdmin();
    database = `mysql://root@127.0.0.1:3306/${tag}`;
    cache = REDIS_URL;
    cleanupStore = async () => {
      await admin?.query(`DROP DATABASE IF EXISTS \`${tag}\``);
      await admin?.end();
      const keys = await redis.keys(`${tag}:*`);
      if (keys.length > 0) await redis.del(...keys);
      redis.disconnect();
    };
  }
  const cachePrefix = `${tag}:`;
  return {
    name,
    database,
    cache,
    cachePrefix,
    async start(config = {}) {
      const t = await startTracker(
        { listen: '127.0.0.1:0', hostname: 'vm', database, cache, ...config },
        { log, cachePrefix },
      );
      trackers.push(t);
      return t;
    },
    async routerRows(appId, userId) {
      const t = trackers[0];
      if (!t) throw new Error('no tracker started');
      if (admin) {
        const [rows] = await admin.query(
          `SELECT group_name FROM \`${tag}\`.t_router WHERE appid = ? AND userid = ?`,
          [appId, userId],
        );
        return rows as { group_name: string | null }[];
      }
      // SQLite: read through a fresh handle of the same file
      const { createDb } = await import('@dsm/db');
      const h = createDb(database);
      try {
        return await h.db
          .selectFrom('t_router')
          .select('group_name')
          .where('appid', '=', appId)
          .where('userid', '=', userId)
          .execute();
      } finally {
        await h.close();
      }
    },
    async cleanup() {
      await Promise.allSettled(trackers.map((t) => t.close()));
      await cleanupStore();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Raw protocol connection
// ---------------------------------------------------------------------------------------------

export interface Reply {
  header: Header;
  body: Uint8Array;
  /** Error replies: errno and description. */
  errno?: number;
  message?: string;
}

export class RawConn {
  readonly socket: Socket;
  readonly #reader = new FrameReader(() => ({ kind: 'buffered', min: 0, max: 1 << 20 }));
  readonly #frames: Reply[] = [];
  #waiter: (() => void) | null = null;
  #closed = false;
  readonly closed: Promise<void>;

  private constructor(socket: Socket) {
    this.socket = socket;
    this.closed = new Promise((resolve) => {
      socket.on('close', () => {
        this.#closed = true;
        this.#wake();
        resolve();
      });
    });
    socket.on('error', () => {});
    socket.on('data', (c: Buffer) => {
      for (const e of this.#reader.push(c) as FrameEvent[]) {
        if (e.type !== 'frame') continue;
        const r: Reply = { header: e.header, body: e.body };
        if (e.header.status !== Status.OK) Object.assign(r, decodeErrorReply(e.body));
        this.#frames.push(r);
      }
      this.#wake();
    });
  }

  static open(port: number, localAddress?: string): Promise<RawConn> {
    return new Promise((resolve, reject) => {
      const s = connect({ port, host: '127.0.0.1', localAddress });
      s.once('error', reject);
      s.once('connect', () => {
        s.off('error', reject);
        resolve(new RawConn(s));
      });
    });
  }

  get isClosed(): boolean {
    return this.#closed;
  }

  #wake(): void {
    const w = this.#waiter;
    this.#waiter = null;
    w?.();
  }

  send(bytes: Uint8Array): void {
    this.socket.write(bytes);
  }

  async next(timeoutMs = 5000): Promise<Reply> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const f = this.#frames.shift();
      if (f) return f;
      if (this.#closed) throw new Error('connection closed without a reply');
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('no reply in time');
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.#waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
  }

  request(command: number, body: Uint8Array = new Uint8Array(0)): Promise<Reply> {
    this.send(encodeFrame(command, body));
    return this.next();
  }

  /** Resolves true when the server closed the connection within `ms`. */
  async closedWithin(ms = 2000): Promise<boolean> {
    if (this.#closed) return true;
    return Promise.race([
      this.closed.then(() => true),
      new Promise<boolean>((r) => setTimeout(() => r(false), ms)),
    ]);
  }

  close(): void {
    this.socket.destroy();
  }
}

/** One request on a fresh connection, which is then closed. */
export async function ask(
  port: number,
  command: number,
  body?: Uint8Array,
  localAddress?: string,
): Promise<Reply> {
  const c = await RawConn.open(port, localAddress);
  try {
    return await c.request(command, body);
  } finally {
    c.close();
  }
}

export async function addrs(port: number, appId: string, userId: string): Promise<Reply> {
  return ask(port, Command.TRACKER_ADDRS, encodeAddrsRequest({ appId, userId, fileId: '' }));
}

export const text = (b: Uint8Array, from = 0): string => {
  const r = b.subarray(from);
  const nul = r.indexOf(0);
  return Buffer.from(nul < 0 ? r : r.subarray(0, nul)).toString('utf8');
};

// ---------------------------------------------------------------------------------------------
// Fake storage speaking the extension join / beat on one persistent connection
// ---------------------------------------------------------------------------------------------

export interface FakeStorageOptions {
  group?: string;
  port: number;
  hostname?: string;
  freeBytes?: number;
  totalBytes?: number;
  load?: number;
  secret?: string;
  localAddress?: string;
}

export class FakeStorage {
  constructor(
    readonly conn: RawConn,
    readonly o: Required<Omit<FakeStorageOptions, 'localAddress'>>,
  ) {}

  static async join(
    trackerPort: number,
    opts: FakeStorageOptions,
  ): Promise<{ storage: FakeStorage; reply: Reply }> {
    const o = {
      group: 'group001',
      hostname: `s${opts.port}`,
      freeBytes: 1000,
      totalBytes: 2000,
      load: 0,
      secret: '',
      ...opts,
    };
    const conn = await RawConn.open(trackerPort, opts.localAddress);
    const now = Math.floor(Date.now() / 1000);
    const reply = await conn.request(
      Command.TRACKER_JOIN_EXT,
      encodeJoinExt({
        version: '2.0',
        group: o.group,
        hostname: o.hostname,
        port: o.port,
        startTime: now,
        joinTime: now,
        protocolVersion: PROTOCOL_VERSION,
        totalBytes: o.totalBytes,
        freeBytes: o.freeBytes,
        load: o.load,
        secret: o.secret,
      }),
    );
    const { localAddress: _, ...rest } = o;
    return { storage: new FakeStorage(conn, rest), reply };
  }

  /** Joins and beats once (ACTIVE); throws on an error reply. */
  static async active(trackerPort: number, opts: FakeStorageOptions): Promise<FakeStorage> {
    const { storage, reply } = await FakeStorage.join(trackerPort, opts);
    if (reply.header.status !== Status.OK) throw new Error(`join refused: ${reply.message}`);
    const b = await storage.beat();
    if (b.header.status !== Status.OK) throw new Error(`beat refused: ${b.message}`);
    return storage;
  }

  beat(over: { freeBytes?: number; load?: number } = {}): Promise<Reply> {
    Object.assign(this.o, over);
    return this.conn.request(
      Command.TRACKER_BEAT_EXT,
      encodeBeatExt({
        group: this.o.group,
        hostname: this.o.hostname,
        port: this.o.port,
        totalBytes: this.o.totalBytes,
        freeBytes: this.o.freeBytes,
        load: this.o.load,
        pendingHeals: -1,
      }),
    );
  }

  close(): void {
    this.conn.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Seed vectors
// ---------------------------------------------------------------------------------------------

export interface SeedVector {
  name: string;
  producer: string;
  direction: 'request' | 'reply';
  command: number;
  status: number;
  frame_hex: string;
  connection: number;
  server: string;
  fields: Record<string, unknown>;
}

const VECTORS_PATH =
  process.env.DSM_SEED_VECTORS ??
  fileURLToPath(new URL('../../../../shared/reference/seed-vectors.json', import.meta.url));

export function loadVectors(): SeedVector[] {
  if (!existsSync(VECTORS_PATH)) {
    throw new Error(`seed vectors not found at ${VECTORS_PATH} (set DSM_SEED_VECTORS)`);
  }
  return JSON.parse(readFileSync(VECTORS_PATH, 'utf8')) as SeedVector[];
}

export const frameOf = (v: SeedVector): Uint8Array => fromHex(v.frame_hex);

export async function until(cond: () => boolean, timeoutMs = 3000, stepMs = 10): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, stepMs));
  }
}
