/**
 * Tracker test helpers (not exported by the package): a backend with trackers started on it,
 * one-shot raw requests, fake storages. Generic test support is in @dsm/testkit.
 */
import { createLogger } from '@dsm/common';
import { createDb } from '@dsm/db';
import {
  Command,
  encodeAddrsRequest,
  encodeBeatExt,
  encodeJoinExt,
  PROTOCOL_VERSION,
  Status,
} from '@dsm/packets';
import { type BackendName, RawConn, type RawFrame, testBackend } from '@dsm/testkit';
import type { TrackerConfigInput } from './config.ts';
import { type RunningTracker, startTracker } from './tracker.ts';

export const log = createLogger('tracker-test');

/** One backend (a fresh database and cache key prefix) with the trackers started on it. */
export interface TrackerBackend {
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

export async function createBackend(name: BackendName): Promise<TrackerBackend> {
  const store = testBackend(name);
  await store.setup();
  const database = store.database('tracker');
  const { cache, cachePrefix } = store;
  const trackers: RunningTracker[] = [];
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
      if (trackers.length === 0) throw new Error('no tracker started');
      // a fresh handle on the same database
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
      await store.cleanup();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Raw protocol requests
// ---------------------------------------------------------------------------------------------

/** One request on a fresh connection, which is then closed. */
export async function ask(
  port: number,
  command: number,
  body?: Uint8Array,
  localAddress?: string,
): Promise<RawFrame> {
  const c = await RawConn.open(port, { localAddress });
  try {
    return await c.request(command, body);
  } finally {
    c.close();
  }
}

export async function addrs(port: number, appId: string, userId: string): Promise<RawFrame> {
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
  ): Promise<{ storage: FakeStorage; reply: RawFrame }> {
    const o = {
      group: 'group001',
      hostname: `s${opts.port}`,
      freeBytes: 1000,
      totalBytes: 2000,
      load: 0,
      secret: '',
      ...opts,
    };
    const conn = await RawConn.open(trackerPort, { localAddress: opts.localAddress });
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

  beat(over: { freeBytes?: number; load?: number; writable?: boolean } = {}): Promise<RawFrame> {
    const { writable = true, ...rest } = over;
    Object.assign(this.o, rest);
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
        writable,
      }),
    );
  }

  close(): void {
    this.conn.close();
  }
}
