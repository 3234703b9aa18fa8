import { DsmError, ErrorCode, isDsmError, messageOf } from '@dsm/common/errors';
import { checkIncrement, type KvStore, ttlToMs } from '@dsm/kv/kv-store';

/**
 * A KvStore every Worker isolate sees: each key lives in a Durable Object, which serialises the
 * operations on it (so a lock's set-if-absent and compare-and-delete are atomic) and expires it
 * from its alarm. `DurableKvStore` is the client the Worker hands the app; `DurableKvObject` is
 * the object (SQLite-backed: one `kv` table per object).
 *
 * Routing: a key that names a group (`group(key)`, e.g. an upload's state and lock) goes to the
 * object `g:<group>`, so what one request touches together lives together and the object's alarm
 * sees the whole upload; any other key (counters, the delete journal, the sweeper's index) goes to
 * one of `shards` objects `s:<n>` by a hash of the key. Every operation touches one key, so any
 * placement keeps the KvStore semantics; the placement only decides the load per object.
 *
 * Bounded: key bytes, value bytes and live keys per object (refused past them), and each call
 * to an object times out (CACHE_UNAVAILABLE, as an unreachable Redis).
 */

/** The parts of the Workers Durable Object API used here (no @cloudflare/workers-types: see cloudflare-sockets.d.ts). */
export interface DurableObjectNamespaceLike {
  idFromName(name: string): unknown;
  get(id: unknown): { fetch(url: string, init?: RequestInit): Promise<Response> };
}

interface SqlCursor {
  toArray(): Record<string, unknown>[];
}

export interface DurableObjectStateLike {
  storage: {
    sql: { exec(query: string, ...bindings: unknown[]): SqlCursor };
    getAlarm(): Promise<number | null>;
    setAlarm(at: number): Promise<void>;
    deleteAll(): Promise<void>;
  };
  blockConcurrencyWhile<T>(fn: () => Promise<T>): Promise<T>;
}

export interface DurableKvLimits {
  /** Objects the keys without a group are spread over. */
  shards: number;
  /** Longest key, in UTF-8 bytes. */
  maxKeyBytes: number;
  /** Largest value, in UTF-8 bytes. */
  maxValueBytes: number;
  /** Most keys one object holds; a write of a new key past it is refused (CACHE_UNAVAILABLE). */
  maxKeysPerObject: number;
  /** How long a call to an object may take before it fails (CACHE_UNAVAILABLE). */
  requestTimeoutMs: number;
}

export const DEFAULT_DURABLE_KV_LIMITS: DurableKvLimits = Object.freeze({
  shards: 16,
  maxKeyBytes: 1024,
  maxValueBytes: 128 * 1024,
  maxKeysPerObject: 100_000,
  requestTimeoutMs: 5000,
});

type Op =
  | { op: 'get'; key: string }
  | { op: 'set'; key: string; value: string; ttlMs?: number }
  | { op: 'setIfAbsent'; key: string; value: string; ttlMs: number }
  | { op: 'del'; key: string }
  | { op: 'delIfValue'; key: string; value: string }
  | { op: 'expire'; key: string; ttlMs: number }
  | { op: 'incrBy'; key: string; n: number };

const utf8 = new TextEncoder();
const OPS = new Set(['get', 'set', 'setIfAbsent', 'del', 'delIfValue', 'expire', 'incrBy']);

/** Checks an operation against the limits (client and object both do); throws BAD_INPUT. */
function checkOp(o: Op, limits: DurableKvLimits): void {
  if (typeof o.key !== 'string' || utf8.encode(o.key).length > limits.maxKeyBytes) {
    throw new DsmError(ErrorCode.BAD_INPUT, `key longer than ${limits.maxKeyBytes} bytes`);
  }
  const withValue = o.op === 'set' || o.op === 'setIfAbsent' || o.op === 'delIfValue';
  if (withValue && (typeof o.value !== 'string' || utf8.encode(o.value).length > limits.maxValueBytes)) {
    throw new DsmError(ErrorCode.BAD_INPUT, `value missing or larger than ${limits.maxValueBytes} bytes`);
  }
  const withTtl = o.op === 'setIfAbsent' || o.op === 'expire';
  if (withTtl || (o.op === 'set' && o.ttlMs !== undefined)) ttlToMs((o as { ttlMs: number }).ttlMs);
  if (o.op === 'incrBy') checkIncrement(o.n);
}

/** FNV-1a of the key's UTF-16 units: stable across isolates and deploys. */
function hash(key: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** The object name a key lives in (see the file comment). */
export function objectNameFor(
  key: string,
  shards: number,
  group?: (key: string) => string | undefined,
): string {
  const g = group?.(key);
  return g === undefined ? `s:${hash(key) % shards}` : `g:${g}`;
}

export interface DurableKvStoreOptions {
  limits: DurableKvLimits;
  /** Keys that must live together name their group (an upload id); others are sharded. */
  group?: (key: string) => string | undefined;
  /** Inside an object: its name and a store over its own storage (a call to itself goes there directly). */
  local?: { name: string; kv: KvStore };
  /** Told of every request to an object (the Worker logs them at debug level: what it costs). */
  onCall?: (op: string, object: string) => void;
}

/** The client: each call is one request to the key's object (see the file comment). */
export class DurableKvStore implements KvStore {
  readonly #ns: DurableObjectNamespaceLike;
  readonly #o: DurableKvStoreOptions;
  #closed = false;

  constructor(ns: DurableObjectNamespaceLike, o: DurableKvStoreOptions) {
    this.#ns = ns;
    this.#o = o;
  }

  /** The object name `key` lives in. */
  objectFor(key: string): string {
    return objectNameFor(key, this.#o.limits.shards, this.#o.group);
  }

  async #call<T>(o: Op): Promise<T> {
    if (this.#closed) throw new DsmError(ErrorCode.CACHE_UNAVAILABLE, 'Durable Object KV store is closed');
    checkOp(o, this.#o.limits);
    const name = this.objectFor(o.key);
    const local = this.#o.local;
    if (local && local.name === name) return (await runOp(local.kv, o)) as T;
    this.#o.onCall?.(o.op, name);
    const ms = this.#o.limits.requestTimeoutMs;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new DsmError(
              ErrorCode.CACHE_UNAVAILABLE,
              `Durable Object ${name} did not answer within ${ms} ms`,
            ),
          ),
        ms,
      );
    });
    try {
      const stub = this.#ns.get(this.#ns.idFromName(name));
      const res = await Promise.race([
        stub.fetch('https://dsm-kv/op', {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(o),
        }),
        timeout,
      ]);
      const body = (await Promise.race([res.json(), timeout])) as { r?: T; code?: string; message?: string };
      if (res.status === 200) return body.r as T;
      const message = body.message ?? `Durable Object ${name} answered ${res.status}`;
      // the object's refusal of a bad key or value is the caller's 400; anything else a 503
      if (body.code === ErrorCode.BAD_INPUT) throw new DsmError(ErrorCode.BAD_INPUT, message);
      throw new DsmError(ErrorCode.CACHE_UNAVAILABLE, message);
    } catch (e) {
      if (isDsmError(e)) throw e;
      throw new DsmError(ErrorCode.CACHE_UNAVAILABLE, `Durable Object ${name}: ${messageOf(e)}`);
    } finally {
      clearTimeout(timer);
    }
  }

  get(key: string): Promise<string | null> {
    return this.#call({ op: 'get', key });
  }
  async set(key: string, value: string, ttlMs?: number): Promise<void> {
    await this.#call({ op: 'set', key, value: String(value), ...(ttlMs === undefined ? {} : { ttlMs }) });
  }
  setIfAbsent(key: string, value: string, ttlMs: number): Promise<boolean> {
    return this.#call({ op: 'setIfAbsent', key, value: String(value), ttlMs });
  }
  async del(key: string): Promise<void> {
    await this.#call({ op: 'del', key });
  }
  delIfValue(key: string, value: string): Promise<boolean> {
    return this.#call({ op: 'delIfValue', key, value: String(value) });
  }
  expire(key: string, ttlMs: number): Promise<boolean> {
    return this.#call({ op: 'expire', key, ttlMs });
  }
  incrBy(key: string, n: number): Promise<number> {
    return this.#call({ op: 'incrBy', key, n });
  }
  async close(): Promise<void> {
    this.#closed = true;
  }
}

function runOp(kv: KvStore, o: Op): Promise<unknown> {
  switch (o.op) {
    case 'get':
      return kv.get(o.key);
    case 'set':
      return kv.set(o.key, o.value, o.ttlMs);
    case 'setIfAbsent':
      return kv.setIfAbsent(o.key, o.value, o.ttlMs);
    case 'del':
      return kv.del(o.key);
    case 'delIfValue':
      return kv.delIfValue(o.key, o.value);
    case 'expire':
      return kv.expire(o.key, o.ttlMs);
    case 'incrBy':
      return kv.incrBy(o.key, o.n);
  }
}

/** The body as text, refused (BAD_INPUT) past `max` bytes before more is read. */
export async function boundedText(req: Request, max: number): Promise<string> {
  const tooLarge = () => new DsmError(ErrorCode.BAD_INPUT, `request larger than ${max} bytes`);
  if (Number(req.headers.get('content-length') ?? 0) > max) throw tooLarge();
  if (!req.body) return '';
  const reader = req.body.getReader();
  const parts: Uint8Array[] = [];
  let n = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    n += value.length;
    if (n > max) {
      await reader.cancel().catch(() => {});
      throw tooLarge();
    }
    parts.push(value);
  }
  const all = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    all.set(p, at);
    at += p.length;
  }
  return new TextDecoder().decode(all);
}

export interface DurableKvObjectOptions {
  limits: DurableKvLimits;
  /**
   * When a key's value says the thing it describes is due for clean-up (an upload's expiry), its
   * Date.now() time; the alarm then calls `onDue(key)`.
   */
  dueAt?: (key: string, value: string) => number | undefined;
  /**
   * Cleans up what a due key describes (the upload's bytes on the storage and its state), with
   * `local` a store over this object's own keys. Resolves true when done; false or a rejection: tried
   * again `retryMs` later (while the key is still due).
   */
  onDue?: (key: string, local: KvStore) => Promise<boolean>;
  retryMs?: number;
}

/**
 * Expired keys are dropped by an alarm this long after their TTL (they read as absent at once):
 * a lock that its holder deletes does not cost an alarm run, nor does an upload done within it.
 */
const GC_SLACK_MS = 3600_000;
/** Due keys handled per alarm run (the rest in the next run, right after). */
const DUE_BATCH = 16;

/**
 * The Durable Object: the KvStore operations on a SQLite table, one request each (POST JSON
 * `{op, key, …}` → 200 `{r}` or 4xx/503 `{code, message}`). Each operation runs without an
 * `await` between its read and its write, so it is atomic (an object runs its JavaScript on one thread
 * and its SQL calls are synchronous). The alarm drops expired keys and runs `onDue`; an object
 * left with no keys deletes its storage (and its alarm), so finished uploads cost no storage.
 */
export class DurableKvObject {
  readonly #ctx: DurableObjectStateLike;
  readonly #o: DurableKvObjectOptions;
  /** Rows in the table (live or expired-but-not-dropped); kept in memory, counted at start. */
  #count = 0;
  #ready = false;
  #alarmAt: number | null = null;
  readonly #local: KvStore;

  constructor(ctx: DurableObjectStateLike, o: DurableKvObjectOptions) {
    this.#ctx = ctx;
    this.#o = o;
    void ctx.blockConcurrencyWhile(async () => {
      this.#alarmAt = await ctx.storage.getAlarm();
    });
    this.#local = {
      get: async (key) => this.#get(key),
      set: async (key, value, ttlMs) => this.#write(() => this.#set(key, value, ttlMs)),
      setIfAbsent: async (key, value, ttlMs) =>
        this.#write(() => {
          if (this.#live(key)) return false;
          this.#set(key, value, ttlMs);
          return true;
        }),
      del: async (key) => this.#write(() => void this.#del(key)),
      delIfValue: async (key, value) =>
        this.#write(() => (this.#live(key)?.value === value ? this.#del(key) : false)),
      expire: async (key, ttlMs) => this.#write(() => this.#expire(key, ttlMs)),
      incrBy: async (key, n) => this.#write(() => this.#incrBy(key, n)),
      close: async () => {},
    };
  }

  #sql(query: string, ...bindings: unknown[]): SqlCursor {
    return this.#ctx.storage.sql.exec(query, ...bindings);
  }

  #ensure(): void {
    if (this.#ready) return;
    this.#sql(
      'CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires_at INTEGER, due_at INTEGER)',
    );
    this.#sql('CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires_at) WHERE expires_at IS NOT NULL');
    this.#sql('CREATE INDEX IF NOT EXISTS kv_due ON kv (due_at) WHERE due_at IS NOT NULL');
    this.#count = Number(this.#sql('SELECT COUNT(*) AS n FROM kv').toArray()[0]?.n ?? 0);
    this.#ready = true;
  }

  #row(key: string): { value: string; expires_at: number | null } | undefined {
    this.#ensure();
    return this.#sql('SELECT value, expires_at FROM kv WHERE key = ?', key).toArray()[0] as
      | { value: string; expires_at: number | null }
      | undefined;
  }

  /** The key's row if it has not expired (an expired one is dropped). */
  #live(key: string): { value: string; expires_at: number | null } | undefined {
    const r = this.#row(key);
    if (r && r.expires_at !== null && r.expires_at <= Date.now()) {
      this.#del(key);
      return undefined;
    }
    return r;
  }

  #get(key: string): string | null {
    return this.#live(key)?.value ?? null;
  }

  /** Room for a new key, or CACHE_UNAVAILABLE (expired rows are dropped first). */
  #admit(): void {
    if (this.#count < this.#o.limits.maxKeysPerObject) return;
    this.#dropExpired(Date.now());
    if (this.#count >= this.#o.limits.maxKeysPerObject) {
      throw new DsmError(
        ErrorCode.CACHE_UNAVAILABLE,
        `Durable Object is full (${this.#o.limits.maxKeysPerObject} keys)`,
      );
    }
  }

  #dropExpired(now: number): void {
    // RETURNING counts the rows themselves (`rowsWritten` also counts index entries)
    this.#count -= this.#sql(
      'DELETE FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ? RETURNING key',
      now,
    ).toArray().length;
  }

  #set(key: string, value: string, ttlMs: number | undefined): void {
    const expires = ttlMs === undefined ? null : Date.now() + ttlToMs(ttlMs);
    const due = this.#o.dueAt?.(key, value) ?? null;
    const existed = this.#row(key) !== undefined;
    if (!existed) this.#admit();
    this.#sql(
      'INSERT INTO kv (key, value, expires_at, due_at) VALUES (?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at, due_at = excluded.due_at',
      key,
      value,
      expires,
      due,
    );
    if (!existed) this.#count++;
  }

  #del(key: string): boolean {
    this.#ensure();
    const n = this.#sql('DELETE FROM kv WHERE key = ? RETURNING key', key).toArray().length;
    this.#count -= n;
    return n > 0;
  }

  #expire(key: string, ttlMs: number): boolean {
    const ms = ttlToMs(ttlMs);
    if (!this.#live(key)) return false;
    this.#sql('UPDATE kv SET expires_at = ? WHERE key = ?', Date.now() + ms, key);
    return true;
  }

  #incrBy(key: string, n: number): number {
    checkIncrement(n);
    const r = this.#live(key);
    const cur = r ? r.value : '0';
    if (!/^-?\d{1,19}$/.test(cur) || !Number.isSafeInteger(Number(cur))) {
      throw new DsmError(ErrorCode.BAD_INPUT, `value of ${key} is not an integer`);
    }
    const next = Number(cur) + n;
    if (!Number.isSafeInteger(next))
      throw new DsmError(ErrorCode.BAD_INPUT, `incrBy ${key}: result out of range`);
    if (r) this.#sql('UPDATE kv SET value = ? WHERE key = ?', String(next), key);
    else {
      this.#admit();
      this.#sql('INSERT INTO kv (key, value) VALUES (?, ?)', key, String(next));
      this.#count++;
    }
    return next;
  }

  /** Runs a synchronous write, then moves the alarm or drops an emptied object's storage. */
  async #write<T>(fn: () => T): Promise<T> {
    const r = fn();
    await this.#settle();
    return r;
  }

  /** The earliest time the alarm has work: a due key, or an expired key to drop. */
  #nextWork(): number | null {
    const row = this.#sql(
      'SELECT (SELECT MIN(due_at) FROM kv WHERE due_at IS NOT NULL) AS due, (SELECT MIN(expires_at) FROM kv WHERE expires_at IS NOT NULL) AS exp',
    ).toArray()[0] as { due: number | null; exp: number | null } | undefined;
    const times = [row?.due, row?.exp == null ? null : row.exp + GC_SLACK_MS].filter(
      (t): t is number => typeof t === 'number',
    );
    return times.length > 0 ? Math.min(...times) : null;
  }

  async #settle(): Promise<void> {
    if (!this.#ready) return;
    if (this.#count <= 0) {
      // counted again before anything is deleted: a drifted count must never cost a key
      this.#count = Number(this.#sql('SELECT COUNT(*) AS n FROM kv').toArray()[0]?.n ?? 0);
    }
    if (this.#count <= 0) {
      // no keys: the object's storage goes (and its alarm with it, compatibility date ≥ 2026-02-24)
      this.#ready = false;
      this.#alarmAt = null;
      await this.#ctx.storage.deleteAll();
      return;
    }
    const next = this.#nextWork();
    // An alarm earlier than needed is harmless (it finds nothing and sets the next one), so the
    // alarm is moved only earlier: one setAlarm per upload, not one per PATCH.
    if (next !== null && (this.#alarmAt === null || next < this.#alarmAt)) {
      this.#alarmAt = next;
      await this.#ctx.storage.setAlarm(next);
    }
  }

  /** A store over this object's own keys (what `onDue` is given). */
  get local(): KvStore {
    return this.#local;
  }

  async fetch(req: Request): Promise<Response> {
    const reply = (status: number, body: unknown) =>
      new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json' } });
    let o: Op;
    try {
      // an operation is a key, a value and a few numbers (JSON-escaped: up to 6 bytes a byte)
      const max = 6 * (this.#o.limits.maxValueBytes + this.#o.limits.maxKeyBytes) + 1024;
      const text = await boundedText(req, max);
      o = JSON.parse(text) as Op;
      if (typeof o !== 'object' || o === null || !OPS.has(o.op))
        throw new DsmError(ErrorCode.BAD_INPUT, 'bad op');
      checkOp(o, this.#o.limits);
    } catch (e) {
      return reply(400, { code: ErrorCode.BAD_INPUT, message: messageOf(e) });
    }
    try {
      const r = await runOp(this.#local, o);
      return reply(200, { r: r ?? null });
    } catch (e) {
      const code = isDsmError(e) ? e.code : ErrorCode.CACHE_UNAVAILABLE;
      return reply(code === ErrorCode.BAD_INPUT ? 400 : 503, { code, message: messageOf(e) });
    }
  }

  async alarm(): Promise<void> {
    this.#alarmAt = null;
    this.#ensure();
    this.#dropExpired(Date.now());
    const due = this.#sql(
      'SELECT key FROM kv WHERE due_at IS NOT NULL AND due_at <= ? ORDER BY due_at LIMIT ?',
      Date.now(),
      DUE_BATCH,
    ).toArray() as { key: string }[];
    for (const { key } of due) {
      let done = false;
      try {
        done = (await this.#o.onDue?.(key, this.#local)) ?? true;
      } catch {
        done = false;
      }
      // still due (not renewed, not deleted): try again later
      if (!done && this.#ready) {
        const now = Date.now();
        this.#sql(
          'UPDATE kv SET due_at = ? WHERE key = ? AND due_at IS NOT NULL AND due_at <= ?',
          now + (this.#o.retryMs ?? 30_000),
          key,
          now,
        );
      }
    }
    await this.#settle();
  }
}
