import { type ClusterKey, Connection, type Transport } from '@dsm/client';
import { nodeTransport } from '@dsm/client/node';
import { type Logger, parseHostPort } from '@dsm/common';
import {
  type Address,
  type Capacity,
  Command,
  encodeBeatExt,
  encodeJoinExt,
  exactly,
  formatAddress,
  PROTOCOL_VERSION,
  SEED_VERSION_STRING,
} from '@dsm/packets';
import { SpaceReader } from './fs-util.ts';

/** What a tracker link is doing (exposed for tests and status pages). */
export interface TrackerLinkState {
  tracker: string;
  status: 'connecting' | 'joined' | 'retrying' | 'stopped';
  /** Successful joins (a re-join after a failure counts again). */
  joins: number;
  /** Successful heartbeats. */
  beats: number;
  failures: number;
  lastError: string | null;
  lastJoinMs: number | null;
  lastBeatMs: number | null;
}

export interface TrackerLinksOptions {
  trackers: readonly string[];
  group: string;
  hostname: string;
  /** Advertised service port. */
  port: number;
  beatIntervalMs: number;
  secret: string;
  /** Folder whose file system is reported as capacity (the first store path). */
  capacityPath: string;
  /** Requests in flight right now. */
  load: () => number;
  /** Pending heals of the group volume (-1 = unknown / not GlusterFS). */
  pendingHeals?: () => number;
  /** Whether the stores take writes (StoreProbe); absent = yes. */
  writable?: () => boolean;
  log: Logger;
  /** Cluster key: each connection authenticates with it before joining (trackers with auth.required). */
  auth?: ClusterKey;
  transport?: Transport;
  connectTimeoutMs?: number;
  ioTimeoutMs?: number;
}

/**
 * One loop per tracker: connect, join (JOIN_EXT), then a heartbeat (BEAT_EXT) every
 * `beatIntervalMs` on the same connection. Any failure or error reply (a restarted tracker
 * answers a heartbeat with an error) closes the connection; after min(2 s, interval) the loop
 * connects and joins again.
 */
export class TrackerLinks {
  readonly states: TrackerLinkState[];
  readonly #opts: TrackerLinksOptions;
  readonly #addrs: Address[];
  readonly #abort = new AbortController();
  readonly #conns = new Set<Connection>();
  readonly #startTime = Math.floor(Date.now() / 1000);
  readonly #space: SpaceReader;
  #loops: Promise<void>[] = [];

  constructor(opts: TrackerLinksOptions) {
    this.#opts = opts;
    this.#addrs = opts.trackers.map((t) => parseHostPort(t));
    this.#space = new SpaceReader(opts.capacityPath);
    this.states = this.#addrs.map((a) => ({
      tracker: formatAddress(a),
      status: 'connecting',
      joins: 0,
      beats: 0,
      failures: 0,
      lastError: null,
      lastJoinMs: null,
      lastBeatMs: null,
    }));
  }

  start(): void {
    this.#loops = this.#addrs.map((a, i) => this.#run(a, this.states[i] as TrackerLinkState));
  }

  get #stopped(): boolean {
    return this.#abort.signal.aborted;
  }

  /** Stops every loop and closes its connection. */
  async close(): Promise<void> {
    this.#abort.abort();
    for (const c of this.#conns) c.destroy();
    await Promise.all(this.#loops);
  }

  /** Sends the next heartbeat on every joined link now (the store's state changed). */
  nudge(): void {
    for (const wake of this.#wakers) wake();
  }

  readonly #wakers = new Set<() => void>();

  /**
   * Waits `ms`; false when the links are closing. `nudge()` ends it early (true): the next beat,
   * or the next join attempt, goes at once.
   */
  #wait(ms: number): Promise<boolean> {
    const signal = this.#abort.signal;
    if (signal.aborted) return Promise.resolve(false);
    return new Promise((resolve) => {
      const done = (go: boolean) => {
        clearTimeout(timer);
        this.#wakers.delete(wake);
        signal.removeEventListener('abort', stop);
        resolve(go);
      };
      const wake = () => done(true);
      const stop = () => done(false);
      const timer = setTimeout(wake, ms);
      this.#wakers.add(wake);
      signal.addEventListener('abort', stop, { once: true });
    });
  }

  /**
   * Capacity for a join/heartbeat. A statfs of a GlusterFS mount blocks while a replica is
   * silent (up to network.ping-timeout), which would stall the heartbeats of every member of
   * the group and get them all marked OFFLINE: so wait at most half a beat interval (≤ 1 s)
   * and send the last known figures meanwhile. One statfs at a time.
   */
  async #capacity(): Promise<Capacity> {
    const load = Math.max(0, Math.min(0xffffffff, this.#opts.load()));
    const reading = this.#space.read().catch(() => ({ totalBytes: 0, freeBytes: 0 }));
    const waitMs = Math.min(1000, Math.max(1, Math.floor(this.#opts.beatIntervalMs / 2)));
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<null>((r) => {
      timer = setTimeout(() => r(null), waitMs);
    });
    const d = await Promise.race([reading, late]);
    clearTimeout(timer);
    return { ...(d ?? this.#space.last?.space ?? { totalBytes: 0, freeBytes: 0 }), load };
  }

  async #run(addr: Address, st: TrackerLinkState): Promise<void> {
    const o = this.#opts;
    const transport = o.transport ?? nodeTransport;
    const log = o.log.child({ tracker: st.tracker });
    while (!this.#stopped) {
      let conn: Connection | undefined;
      try {
        st.status = 'connecting';
        const sock = await transport.connect(addr.host, addr.port, {
          timeoutMs: o.connectTimeoutMs ?? 10_000,
        });
        conn = new Connection(sock, st.tracker, { ioTimeoutMs: o.ioTimeoutMs ?? 30_000 });
        this.#conns.add(conn);
        if (this.#stopped) break;
        if (o.auth) await conn.authenticate(o.auth);
        const now = Math.floor(Date.now() / 1000);
        const join = encodeJoinExt({
          version: SEED_VERSION_STRING,
          group: o.group,
          hostname: o.hostname,
          port: o.port,
          startTime: this.#startTime,
          joinTime: now,
          protocolVersion: PROTOCOL_VERSION,
          secret: o.secret,
          ...(await this.#capacity()),
        });
        await conn.request(Command.TRACKER_JOIN_EXT, join, Command.TRACKER_REPLY, exactly(0));
        st.joins++;
        st.status = 'joined';
        st.lastJoinMs = Date.now();
        st.lastError = null;
        log.info({ group: o.group, port: o.port }, 'joined tracker');
        // The first beat goes right after the join: a tracker routes only to ACTIVE storages,
        // and a storage becomes ACTIVE on a beat, so a restarted tracker (or one whose link
        // came back) would otherwise route nothing to it for a whole beat interval.
        do {
          const beat = encodeBeatExt({
            group: o.group,
            hostname: o.hostname,
            port: o.port,
            pendingHeals: o.pendingHeals?.() ?? -1,
            writable: o.writable?.() ?? true,
            ...(await this.#capacity()),
          });
          await conn.request(Command.TRACKER_BEAT_EXT, beat, Command.TRACKER_REPLY, exactly(0));
          st.beats++;
          st.lastBeatMs = Date.now();
        } while (await this.#wait(o.beatIntervalMs));
      } catch (e) {
        if (this.#stopped) break;
        const message = e instanceof Error ? e.message : String(e);
        // Log a change of situation loudly, repeats quietly.
        if (st.lastError !== message) log.warn({ err: message }, 'tracker link failed; joining again');
        else log.debug({ err: message }, 'tracker link failed again');
        st.failures++;
        st.lastError = message;
        st.status = 'retrying';
      } finally {
        if (conn) {
          conn.destroy();
          this.#conns.delete(conn);
        }
      }
      if (!(await this.#wait(Math.min(2000, o.beatIntervalMs)))) break;
    }
    st.status = 'stopped';
  }
}
