import { DsmError, ErrorCode, isDsmError } from '@dsm/common/errors';
import { type Address, encodeFrame, type FrameSpec, formatAddress } from '@dsm/packets';
import type { ClusterKey } from './cluster-key.ts';
import { Connection, contextFrame, prefixed } from './connection.ts';
import { started } from './failover.ts';
import { Pipe, type PipelineOptions, Unanswered } from './pipeline.ts';
import type { Transport } from './transport.ts';

export interface PoolOptions {
  transport: Transport;
  /** Open connections per server address. */
  maxPerAddress?: number;
  /** Callers waiting for a connection per address; beyond this, acquire fails at once. */
  maxQueue?: number;
  connectTimeoutMs?: number;
  ioTimeoutMs?: number;
  /** Idle connections are closed after this long. */
  idleTimeoutMs?: number;
  /** Longest wait in the queue. */
  acquireTimeoutMs?: number;
  /** Cluster key: every new connection authenticates with it (mutually) before its first request. */
  auth?: ClusterKey;
  /**
   * Small idempotent requests (`request`) pipelined on a few kept connections per address
   * (pipeline.ts); absent: each takes a connection of its own.
   */
  pipeline?: PipelineOptions;
}

interface Waiter {
  resolve: (c: Connection | null) => void;
  reject: (e: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

interface Slot {
  idle: Connection[];
  open: number;
  waiters: Waiter[];
  /** Pipelined connections (PoolOptions.pipeline), and how many are being opened. */
  pipes: Pipe[];
  opening: number;
  /** No pipe is opened before this time (one failed to open). */
  pipesAfter: number;
}

/** After a pipe failed to open, requests take the pool's way this long before another try. */
const PIPE_RETRY_MS = 1000;

/**
 * A pipe whose oldest request has waited this long takes no more: a request stuck behind a slow
 * one (a metadata lookup that waits for a busy database) would wait as long, so new requests
 * take connections of their own until it moves again. A small read answers in a millisecond or
 * two here, under load too.
 */
export const PIPE_STALL_MS = 50;

/**
 * Connections per server address with a bounded queue and timeouts (undici's Pool idea).
 * Connections stay open between requests, as the seed's client does.
 */
export class Pool {
  readonly #opts: Required<Omit<PoolOptions, 'auth' | 'pipeline'>> & Pick<PoolOptions, 'auth' | 'pipeline'>;
  readonly #slots = new Map<string, Slot>();
  readonly #sweeper: ReturnType<typeof setInterval>;
  #closed = false;

  constructor(opts: PoolOptions) {
    this.#opts = {
      maxPerAddress: 8,
      maxQueue: 256,
      connectTimeoutMs: 5000,
      ioTimeoutMs: 30_000,
      idleTimeoutMs: 60_000,
      acquireTimeoutMs: 10_000,
      ...opts,
    };
    this.#sweeper = setInterval(() => this.#sweep(), Math.min(this.#opts.idleTimeoutMs, 10_000));
    (this.#sweeper as { unref?: () => void }).unref?.();
  }

  get options(): Readonly<
    Required<Omit<PoolOptions, 'auth' | 'pipeline'>> & Pick<PoolOptions, 'auth' | 'pipeline'>
  > {
    return this.#opts;
  }

  /**
   * Runs `fn` on a pooled connection to `addr`. Idempotent requests (`retryStale`) are retried
   * once on a fresh connection when a reused one turns out to have been closed by the server.
   * `requestId` is named to the node with every request `fn` sends (Connection.requestId).
   * With an idle connection at hand, `fn` runs at once (the hot path of a small request: no
   * await before the request goes out); else after a connection was opened or freed.
   */
  use<T>(
    addr: Address,
    fn: (c: Connection) => Promise<T>,
    retryStale = false,
    requestId?: string,
  ): Promise<T> {
    const key = keyOf(addr);
    const idle = this.#closed ? null : this.#takeIdle(this.#slots.get(key));
    if (idle) return this.#run(addr, key, idle, true, fn, retryStale, requestId);
    return this.#acquire(addr).then(({ conn, reused }) =>
      this.#run(addr, key, conn, reused, fn, retryStale, requestId),
    );
  }

  /**
   * A small idempotent request with a buffered reply (`ok`): pipelined when the pool pipelines,
   * the reply fits PipelineOptions.maxReplyBytes and a pipe has room; else (and when the pipe
   * ended before this request was answered) on a connection of its own, as `use` with
   * retryStale.
   */
  request(
    addr: Address,
    command: number,
    body: Uint8Array,
    replyCommand: number,
    ok: FrameSpec,
    requestId?: string,
  ): Promise<Uint8Array> {
    const alone = () => this.use(addr, (c) => c.request(command, body, replyCommand, ok), true, requestId);
    const pl = this.#opts.pipeline;
    const pipe = pl && ok.kind === 'buffered' && ok.max <= pl.maxReplyBytes ? this.#pipeFor(addr, pl) : null;
    if (!pipe) return alone();
    const frame = prefixed(contextFrame(requestId), encodeFrame(command, body));
    return pipe.request(frame, replyCommand, ok).catch((e: unknown) => {
      if (e instanceof Unanswered) return alone();
      throw e;
    });
  }

  /**
   * The least busy pipe to `addr` with room and not stalled (PIPE_STALL_MS), or null; opens
   * another when all are half full.
   */
  #pipeFor(addr: Address, pl: PipelineOptions): Pipe | null {
    if (this.#closed) return null;
    const key = keyOf(addr);
    const slot = this.#slot(key);
    let best: Pipe | null = null;
    const stalledBefore = Date.now() - PIPE_STALL_MS;
    for (let i = slot.pipes.length - 1; i >= 0; i--) {
      const p = slot.pipes[i] as Pipe;
      if (!p.usable) {
        slot.pipes.splice(i, 1);
        continue;
      }
      const since = p.waitingSince;
      if (since !== null && since < stalledBefore) continue;
      if (!best || p.depth < best.depth) best = p;
    }
    if (
      (!best || best.depth * 2 >= pl.depth) &&
      slot.pipes.length + slot.opening < pl.pipes &&
      Date.now() >= slot.pipesAfter
    ) {
      this.#openPipe(addr, key, slot);
    }
    return best && best.depth < pl.depth ? best : null;
  }

  #openPipe(addr: Address, key: string, slot: Slot): void {
    slot.opening++;
    this.#connect(addr, key).then(
      (conn) => {
        slot.opening--;
        if (this.#closed) {
          conn.destroy();
          return;
        }
        try {
          slot.pipes.push(new Pipe(conn.detach(), key, this.#opts.ioTimeoutMs));
        } catch {
          // bytes the server sent unasked after the handshake: no pipe on that connection
          conn.destroy();
          slot.pipesAfter = Date.now() + PIPE_RETRY_MS;
        }
      },
      () => {
        // the requests meanwhile take the pool's way, which reports the failure
        slot.opening--;
        slot.pipesAfter = Date.now() + PIPE_RETRY_MS;
      },
    );
  }

  /** A new connection to `addr`, authenticated when the pool has a cluster key. */
  async #connect(addr: Address, key: string): Promise<Connection> {
    const sock = await this.#opts.transport.connect(addr.host, addr.port, {
      timeoutMs: this.#opts.connectTimeoutMs,
    });
    const conn = new Connection(sock, key, { ioTimeoutMs: this.#opts.ioTimeoutMs });
    if (this.#opts.auth) {
      try {
        await conn.authenticate(this.#opts.auth);
      } catch (e) {
        conn.destroy();
        throw e;
      }
    }
    return conn;
  }

  #run<T>(
    addr: Address,
    key: string,
    conn: Connection,
    reused: boolean,
    fn: (c: Connection) => Promise<T>,
    retryStale: boolean,
    requestId: string | undefined,
  ): Promise<T> {
    conn.requestId = requestId;
    return started(fn, conn).then(
      (r) => {
        this.#releaseKey(key, conn);
        return r;
      },
      (e: unknown) => {
        this.#releaseKey(key, conn);
        if (retryStale && reused && isDsmError(e, ErrorCode.SOCKET, ErrorCode.CONNECT)) {
          return this.#acquire(addr, true).then((fresh) =>
            this.#run(addr, key, fresh.conn, false, fn, false, requestId),
          );
        }
        throw e;
      },
    );
  }

  /** A usable idle connection of `slot`, taken (it counts as in use), or null. */
  #takeIdle(slot: Slot | undefined): Connection | null {
    if (!slot) return null;
    while (slot.idle.length > 0) {
      const c = slot.idle.pop() as Connection;
      if (c.usable) return c;
      slot.open--;
    }
    return null;
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#sweeper);
    for (const slot of this.#slots.values()) {
      for (const c of slot.idle) c.close();
      slot.idle = [];
      for (const p of slot.pipes) p.close();
      slot.pipes = [];
      for (const w of slot.waiters) {
        clearTimeout(w.timer);
        w.reject(new DsmError(ErrorCode.POOL_FULL, 'pool closed'));
      }
      slot.waiters = [];
    }
  }

  #slot(key: string): Slot {
    let s = this.#slots.get(key);
    if (!s) {
      s = { idle: [], open: 0, waiters: [], pipes: [], opening: 0, pipesAfter: 0 };
      this.#slots.set(key, s);
    }
    return s;
  }

  async #acquire(addr: Address, fresh = false): Promise<{ conn: Connection; reused: boolean }> {
    if (this.#closed) throw new DsmError(ErrorCode.POOL_FULL, 'pool closed');
    const key = keyOf(addr);
    const slot = this.#slot(key);
    for (;;) {
      const idle = fresh ? null : this.#takeIdle(slot);
      if (idle) return { conn: idle, reused: true };
      if (slot.open < this.#opts.maxPerAddress) {
        slot.open++;
        try {
          return { conn: await this.#connect(addr, key), reused: false };
        } catch (e) {
          slot.open--;
          this.#wakeOne(slot);
          throw e;
        }
      }
      if (fresh && slot.idle.length > 0) {
        // make room for a fresh connection by dropping an idle one
        (slot.idle.shift() as Connection).close();
        slot.open--;
        continue;
      }
      if (slot.waiters.length >= this.#opts.maxQueue) {
        throw new DsmError(ErrorCode.POOL_FULL, `too many requests waiting for ${key}`);
      }
      const got = await new Promise<Connection | null>((resolve, reject) => {
        const timer = setTimeout(() => {
          slot.waiters = slot.waiters.filter((w) => w.timer !== timer);
          reject(
            new DsmError(
              ErrorCode.TIMEOUT,
              `no connection to ${key} within ${this.#opts.acquireTimeoutMs} ms`,
            ),
          );
        }, this.#opts.acquireTimeoutMs);
        slot.waiters.push({ resolve, reject, timer });
      });
      if (got) return { conn: got, reused: true };
    }
  }

  #releaseKey(key: string, conn: Connection): void {
    const slot = this.#slot(key);
    if (!conn.usable || this.#closed) {
      conn.destroy();
      slot.open--;
      this.#wakeOne(slot);
      return;
    }
    const w = slot.waiters.shift();
    if (w) {
      clearTimeout(w.timer);
      w.resolve(conn);
      return;
    }
    slot.idle.push(conn);
  }

  /** A slot freed up: let one waiter try to open a connection. */
  #wakeOne(slot: Slot): void {
    const w = slot.waiters.shift();
    if (w) {
      clearTimeout(w.timer);
      w.resolve(null);
    }
  }

  #sweep(): void {
    const cutoff = Date.now() - this.#opts.idleTimeoutMs;
    for (const slot of this.#slots.values()) {
      slot.idle = slot.idle.filter((c) => {
        if (c.usable && c.lastUsed >= cutoff) return true;
        c.close();
        slot.open--;
        return false;
      });
      slot.pipes = slot.pipes.filter((p) => {
        if (p.usable && (p.depth > 0 || p.lastUsed >= cutoff)) return true;
        p.close();
        return false;
      });
    }
  }
}

const addressKeys = new WeakMap<Address, string>();

/** formatAddress of an address, made once per address object (they are kept, e.g. by locate). */
function keyOf(a: Address): string {
  let k = addressKeys.get(a);
  if (k === undefined) {
    k = formatAddress(a);
    addressKeys.set(a, k);
  }
  return k;
}
