import { DsmError, type DsmErrorCode, ErrorCode, isDsmError } from '@dsm/common';
import type { KvStore } from '@dsm/kv';

/**
 * The embedded cache of a multi-process gateway. An in-process store (`cache` "memory:") cannot
 * be shared between processes, so the cluster's primary holds the one MemoryKvStore and every
 * worker reaches it over the cluster's IPC channel: tus state, locks and counters are the same
 * whichever worker a request lands on, as with Redis. Each call is one message each way (tens of
 * microseconds on one machine); production uses Redis (`cache: redis://…`).
 */

const REQ = 'dsm:kv';
const RES = 'dsm:kv:r';

const OPS = ['get', 'set', 'setIfAbsent', 'del', 'delIfValue', 'expire', 'incrBy'] as const;
type Op = (typeof OPS)[number];

interface KvRequest {
  type: typeof REQ;
  id: number;
  op: Op;
  args: unknown[];
}
interface KvReply {
  type: typeof RES;
  id: number;
  ok: boolean;
  value?: unknown;
  code?: string;
  message?: string;
}

/** Longest a worker waits for the primary's answer. */
export const IPC_KV_TIMEOUT_MS = 5000;
/** Most calls a worker has in flight; beyond, calls fail at once (CACHE_UNAVAILABLE). */
export const IPC_KV_MAX_PENDING = 10_000;
/** Longest key or value the primary accepts from a worker (the store is the primary's memory). */
const MAX_TEXT = 1024 * 1024;

interface IpcProcess {
  send?: (message: unknown) => boolean;
  connected?: boolean;
  on(event: 'message', fn: (m: unknown) => void): unknown;
  on(event: 'disconnect', fn: () => void): unknown;
  off(event: 'message', fn: (m: unknown) => void): unknown;
}

/** A worker's KvStore: every call goes to the primary (serveKvOverIpc). */
export class IpcKvStore implements KvStore {
  readonly #proc: IpcProcess;
  readonly #pending = new Map<
    number,
    { resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }
  >();
  #next = 1;
  #closed = false;
  readonly #onMessage = (m: unknown) => this.#reply(m);

  constructor(proc: IpcProcess = process as unknown as IpcProcess) {
    this.#proc = proc;
    proc.on('message', this.#onMessage);
    proc.on('disconnect', () => this.#failAll('the gateway primary is gone'));
  }

  get(key: string) {
    return this.#call('get', [key]) as Promise<string | null>;
  }
  async set(key: string, value: string, ttlMs?: number) {
    await this.#call('set', ttlMs === undefined ? [key, value] : [key, value, ttlMs]);
  }
  setIfAbsent(key: string, value: string, ttlMs: number) {
    return this.#call('setIfAbsent', [key, value, ttlMs]) as Promise<boolean>;
  }
  async del(key: string) {
    await this.#call('del', [key]);
  }
  delIfValue(key: string, value: string) {
    return this.#call('delIfValue', [key, value]) as Promise<boolean>;
  }
  expire(key: string, ttlMs: number) {
    return this.#call('expire', [key, ttlMs]) as Promise<boolean>;
  }
  incrBy(key: string, n: number) {
    return this.#call('incrBy', [key, n]) as Promise<number>;
  }
  async close() {
    if (this.#closed) return;
    this.#closed = true;
    this.#proc.off('message', this.#onMessage);
    this.#failAll('the cache is closed');
  }

  #call(op: Op, args: unknown[]): Promise<unknown> {
    if (this.#closed) return Promise.reject(unavailable('the cache is closed'));
    if (!this.#proc.send || this.#proc.connected === false)
      return Promise.reject(unavailable('no channel to the gateway primary'));
    if (this.#pending.size >= IPC_KV_MAX_PENDING)
      return Promise.reject(unavailable(`${IPC_KV_MAX_PENDING} cache calls already waiting`));
    const id = this.#next;
    this.#next = this.#next >= Number.MAX_SAFE_INTEGER ? 1 : this.#next + 1;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(unavailable(`no answer from the gateway primary within ${IPC_KV_TIMEOUT_MS} ms`));
      }, IPC_KV_TIMEOUT_MS);
      this.#pending.set(id, { resolve, reject, timer });
      const msg: KvRequest = { type: REQ, id, op, args };
      try {
        this.#proc.send?.(msg);
      } catch (e) {
        clearTimeout(timer);
        this.#pending.delete(id);
        reject(unavailable(`cannot reach the gateway primary: ${(e as Error).message}`));
      }
    });
  }

  #reply(m: unknown): void {
    if (!isObject(m) || m.type !== RES || typeof m.id !== 'number') return;
    const p = this.#pending.get(m.id);
    if (!p) return; // timed out already
    this.#pending.delete(m.id);
    clearTimeout(p.timer);
    const r = m as unknown as KvReply;
    if (r.ok) p.resolve(r.value ?? null);
    else
      p.reject(
        new DsmError(
          (r.code as DsmErrorCode | undefined) ?? ErrorCode.CACHE_UNAVAILABLE,
          String(r.message ?? 'cache call failed'),
        ),
      );
  }

  #failAll(why: string): void {
    for (const [id, p] of this.#pending) {
      clearTimeout(p.timer);
      p.reject(unavailable(why));
      this.#pending.delete(id);
    }
  }
}

/** The primary's end of one worker's channel (a cluster Worker; a forked ChildProcess in tests). */
export interface IpcPeer {
  on(event: 'message', fn: (m: unknown) => void): unknown;
  send(message: unknown): unknown;
  isConnected(): boolean;
}

/**
 * The primary's side: answers one worker's cache calls from `store`. Returns the listener to
 * remove when the worker is gone. A malformed message is dropped (the workers run our code, but
 * a bug there must not take the primary down).
 */
export function serveKvOverIpc(worker: IpcPeer, store: KvStore): (m: unknown) => void {
  const onMessage = (m: unknown) => {
    if (!isObject(m) || m.type !== REQ || typeof m.id !== 'number') return;
    const id = m.id;
    const answer = (r: Omit<KvReply, 'type' | 'id'>) => {
      if (worker.isConnected()) worker.send({ type: RES, id, ...r } satisfies KvReply);
    };
    let p: Promise<unknown>;
    try {
      p = dispatch(store, m.op, m.args);
    } catch (e) {
      p = Promise.reject(e);
    }
    p.then(
      (value) => answer({ ok: true, value: value ?? null }),
      (e: unknown) =>
        answer({
          ok: false,
          code: isDsmError(e) ? e.code : ErrorCode.CACHE_UNAVAILABLE,
          message: (e as Error)?.message ?? String(e),
        }),
    );
  };
  worker.on('message', onMessage);
  return onMessage;
}

function dispatch(store: KvStore, op: unknown, args: unknown): Promise<unknown> {
  if (!Array.isArray(args) || args.length > 3) throw badCall(op);
  const [a, b, c] = args as unknown[];
  const key = text(a, op);
  switch (op) {
    case 'get':
      return store.get(key);
    case 'del':
      return store.del(key);
    case 'set':
      return store.set(key, text(b, op), c === undefined ? undefined : num(c, op));
    case 'setIfAbsent':
      return store.setIfAbsent(key, text(b, op), num(c, op));
    case 'delIfValue':
      return store.delIfValue(key, text(b, op));
    case 'expire':
      return store.expire(key, num(b, op));
    case 'incrBy':
      return store.incrBy(key, num(b, op));
    default:
      throw badCall(op);
  }
}

function text(v: unknown, op: unknown): string {
  if (typeof v !== 'string' || v.length > MAX_TEXT) throw badCall(op);
  return v;
}
function num(v: unknown, op: unknown): number {
  if (typeof v !== 'number') throw badCall(op);
  return v;
}
const badCall = (op: unknown) =>
  new DsmError(ErrorCode.BAD_INPUT, `malformed cache call over IPC (${String(op).slice(0, 32)})`);
const unavailable = (why: string) => new DsmError(ErrorCode.CACHE_UNAVAILABLE, `cache unavailable: ${why}`);
const isObject = (m: unknown): m is Record<string, unknown> => typeof m === 'object' && m !== null;
