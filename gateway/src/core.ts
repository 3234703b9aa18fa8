import { type DsmClient, decodePublicId } from '@dsm/client';
import { LruMap } from '@dsm/common/lru';
import type { KvStore } from '@dsm/kv';
import { type FileIds, type FileStat, toHex } from '@dsm/packets';
import type { Context } from 'hono';
import { type Action, type Principal, TokenVerifier } from './auth.ts';
import { ByteLru } from './byte-lru.ts';
import type { DownloadPolicy, GatewayConfig } from './config.ts';
import { EdgeLimits } from './edge-limits.ts';
import { DeleteJournal, StorageDeleteFeed } from './invalidation.ts';
import { IsolateKvStore } from './isolate-kv.ts';
import { badRequest } from './problem.ts';
import { SliceCache, type SliceSource } from './slices.ts';
import { Uploader } from './uploads.ts';

/** The subset of a pino logger the gateway uses (pino fits; the Worker entry passes its own). */
export interface GatewayLog {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

/** Metrics sink; the Node entry uses prom-client (metrics.ts), the default records nothing. */
export interface GatewayMetrics {
  request(method: string, route: string, status: number, seconds: number): void;
  bytesOut(route: string, n: number): void;
  bytesIn(route: string, n: number): void;
  tusSwept?(n: number): void;
  /** A download looked its file up in the stat or small-file cache. */
  cacheLookup?(cache: 'stat' | 'file', hit: boolean): void;
  /**
   * A slice of a big file, or the part of one a request wants, was read from the storage
   * (`bytes` of it; range coalescing, slices.ts).
   */
  sliceRead?(bytes: number): void;
  /**
   * The caches dropped a deleted file (`file`), or everything (`all`: the delete journal or a
   * storage's delete log could not say what was deleted), or a read of those failed (`failed`:
   * nothing cached is served until one succeeds).
   */
  invalidation?(kind: 'file' | 'all' | 'failed'): void;
  /** The exposition text for GET /metrics. */
  render(): Promise<{ contentType: string; body: string }>;
}

/** A file's stat with what every reply derives from it, computed once. */
export interface FileEntry {
  /** Date.now() when the stat was read. */
  at: number;
  stat: FileStat;
  ids: FileIds;
  publicId: string;
  /** `"<sha-256 hex>"` */
  etag: string;
  mtimeSec: number;
  /** The HTTP-date of mtimeSec. */
  lastModified: string;
}

/** Finished stat answers by public id (see GatewayCore.file), at most `statCacheMax`. */
export type StatCache = LruMap<string, FileEntry>;

/**
 * Stats kept beyond this process (the Worker: the Cache API of its colo, edge-cache.ts), each
 * for a bounded time: a delete elsewhere cannot reach every copy.
 */
export interface StatStore {
  /** How long a stat is trusted, in the store and so in memory too (from the storage's answer). */
  readonly maxAgeMs: number;
  /** The file's entry from the store, or from `read()` (once for callers at the same time), stored. */
  load(publicId: string, ids: FileIds, read: () => Promise<FileEntry>): Promise<FileEntry>;
  /** A deleted file: what the store holds of it (stat, slices) goes, as far as it can. Never throws. */
  purge(publicId: string): Promise<void>;
}

export interface GatewayDeps {
  client: DsmClient;
  kv: KvStore;
  config: GatewayConfig;
  log?: GatewayLog;
  metrics?: GatewayMetrics;
  /**
   * Share the stat cache between app instances (the Worker builds one app per request, since a
   * Worker request may not use another request's sockets). Default: one per instance.
   */
  statCache?: StatCache;
  /** Share the token verifier (and its JWKS cache) the same way. Default: one per instance. */
  verifier?: TokenVerifier;
  /** Share the edge's concurrency counters the same way (the Worker: one per isolate). */
  edgeLimits?: EdgeLimits;
  /**
   * A slice cache shared beyond this instance (the Worker's edge cache: one per isolate, over the
   * Cache API): every download's bytes then come through it, whatever their length, and the
   * small-file cache and `rangeCache` are not used. Default: `rangeCache`, one per instance.
   */
  slices?: SliceCache;
  /** A second level for stats (the Worker's edge cache). Default: none. */
  statStore?: StatStore;
  /**
   * Share the delete journal (the Worker: one per isolate, dropping from the shared `statCache`
   * and `slices`). Default: one per instance, dropping from its caches. A journal of its own
   * would, on its first read, drop everything shared (it cannot know what was deleted before).
   */
  journal?: DeleteJournal;
  /**
   * Work that must outlive the reply (the Worker: `ctx.waitUntil`, and the request's storage
   * connections stay open until it is done): slice reads other requests may share, a delete's
   * journal write and edge purge not waited for (forget()).
   */
  background?: (p: Promise<unknown>) => void;
}

const noop = () => {};
export const silentLog: GatewayLog = { debug: noop, info: noop, warn: noop, error: noop };

/** Shared state and services of one gateway instance (independent of the HTTP framework). */
export class GatewayCore {
  readonly client: DsmClient;
  readonly kv: KvStore;
  readonly cfg: GatewayConfig;
  readonly log: GatewayLog;
  /** Debug lines are built only when the logger would write them (pino's isLevelEnabled). */
  readonly debugEnabled: boolean;
  /** The access log (one `info` line per request) is written: the logger's level is info or lower. */
  readonly infoEnabled: boolean;
  readonly metrics: GatewayMetrics | undefined;
  readonly verifier: TokenVerifier;
  readonly uploader: Uploader;
  readonly edgeLimits: EdgeLimits;
  /** Range coalescing (config `rangeCache`, or the Worker's edge cache); null when off. */
  readonly slices: SliceCache | null;
  /** Every download goes through `slices` (GatewayDeps.slices), not only mid-sized replies. */
  readonly slicesForAll: boolean;
  /** Where this instance's slice reads come from (its client). */
  readonly sliceSource: SliceSource;
  readonly journal: DeleteJournal;
  /** How long a cached stat is trusted (see the constructor). */
  readonly statMaxAgeMs: number;
  readonly #stats: StatCache;
  readonly #statStore: StatStore | undefined;
  readonly #background: ((p: Promise<unknown>) => void) | undefined;
  readonly #inflight = new Map<string, Promise<FileEntry>>();
  readonly #files: ByteLru<Uint8Array<ArrayBuffer>> | null;
  readonly #fileReads = new Map<string, Promise<Uint8Array<ArrayBuffer>>>();
  /** Bumped by every invalidation: an answer that was under way across one is not kept. */
  #gen = 0;
  #journalWarnedAt = 0;

  constructor(d: GatewayDeps) {
    this.client = d.client;
    this.kv = d.kv;
    this.cfg = d.config;
    this.log = d.log ?? silentLog;
    const lv = (this.log as { isLevelEnabled?: (l: string) => boolean }).isLevelEnabled;
    this.debugEnabled = typeof lv === 'function' ? lv.call(this.log, 'debug') : d.log !== undefined;
    this.infoEnabled = typeof lv === 'function' ? lv.call(this.log, 'info') : d.log !== undefined;
    this.metrics = d.metrics;
    this.#stats = d.statCache ?? new LruMap(d.config.statCacheMax);
    this.#statStore = d.statStore;
    this.#background = d.background;
    this.verifier = d.verifier ?? new TokenVerifier(d.config.auth);
    this.edgeLimits = d.edgeLimits ?? new EdgeLimits(d.config.limits);
    this.uploader = new Uploader(d.client, d.config.uploadBlockBytes);
    const fc = d.config.fileCache;
    this.#files = fc.maxBytes > 0 && fc.maxFileBytes > 0 ? new ByteLru(fc.maxBytes, fc.maxFileBytes) : null;
    const rc = d.config.rangeCache;
    this.slices =
      d.slices ??
      (rc.maxBytes > 0 ? new SliceCache({ sliceBytes: rc.sliceBytes, maxBytes: rc.maxBytes }) : null);
    this.slicesForAll = d.slices !== undefined;
    this.sliceSource = {
      read: (ids, offset, length) => this.client.download(ids, offset, length),
      onRead: (bytes) => this.metrics?.sliceRead?.(bytes),
      ...(d.background ? { started: d.background } : {}),
    };
    // A Worker isolate's store is its own: the journal there never hears of deletes through the
    // other isolates, so a stat is trusted no longer than the former default (2 s).
    // With a stat store, memory trusts a stat no longer than the store does (its bound is the one
    // documented for deletes it cannot reach).
    this.statMaxAgeMs = Math.min(
      d.kv instanceof IsolateKvStore
        ? Math.min(d.config.statCacheMs, UNSHARED_STAT_MS)
        : d.config.statCacheMs,
      d.statStore?.maxAgeMs ?? Number.POSITIVE_INFINITY,
    );
    this.journal =
      d.journal ??
      new DeleteJournal(
        // every delete goes through a storage, which logs it: the storages' log is the one
        // source (the Worker, which cannot read it, journals its deletes in its store)
        new StorageDeleteFeed(this.client),
        d.config.invalidationPollMs,
        (id) => this.#drop(id),
        () => this.#dropAll(),
        (e) => {
          this.metrics?.invalidation?.('failed');
          // once a minute at most: a failing read repeats every invalidationPollMs
          const now = Date.now();
          if (now - this.#journalWarnedAt < 60_000) return;
          this.#journalWarnedAt = now;
          this.log.warn(
            { err: e },
            'the delete journal or a storage delete log cannot be read: caches not served until it can',
          );
        },
      );
  }

  /**
   * The client for a request's work: every node it asks logs the request's id (`rid`, the
   * `X-Request-Id` of the access log), so one upload can be followed through every log.
   */
  clientFor(c: Context): DsmClient {
    // made once per request (a stat, a download and a reopen of one GET share it)
    let client = c.get('dsmClient') as DsmClient | undefined;
    if (!client) {
      client = this.client.forRequest(c.get('requestId'));
      c.set('dsmClient', client);
    }
    return client;
  }

  /** The uploader for a request's work (see clientFor). */
  uploaderFor(c: Context): Uploader {
    return this.uploaderWith(this.clientFor(c));
  }

  /** The uploader whose nodes are asked through `client` (a request's, see clientFor). */
  uploaderWith(client: DsmClient): Uploader {
    return client === this.client ? this.uploader : new Uploader(client, this.uploader.blockBytes);
  }

  /**
   * The request's caller (auth.ts `principal`), noted on the context as `app/user` for the
   * access log.
   */
  async principal(c: Context, action?: Action): Promise<Principal> {
    const p = await this.verifier.principal(c.req.header('authorization'), action);
    c.set('principal', `${p.appId}/${p.userId}`);
    return p;
  }

  /**
   * A public id from a URL, as ids. A string that is not a well-formed id (bounded fields,
   * canonical base64url) is a 400 problem; a well-formed id of no file is the storage's 404.
   */
  parseId(publicId: string): FileIds {
    try {
      return decodePublicId(publicId);
    } catch {
      throw badRequest('not a dsm file id');
    }
  }

  /**
   * Whether what is cached may be served now (and new answers kept): caching is on
   * (`statCacheMs` > 0) and the delete journal was read recently (invalidation.ts).
   */
  cachesUsable(): boolean | Promise<boolean> {
    return this.statMaxAgeMs > 0 ? this.journal.usable() : false;
  }

  /**
   * A file's stat, reused until a delete through any gateway drops it (or `statCacheMs`;
   * files never change, ids are never reused). Concurrent requests for one file (a CDN's range
   * storm) share one storage round trip. `usable`: what cachesUsable() said.
   */
  async file(publicId: string, ids: FileIds, usable: boolean, client = this.client): Promise<FileEntry> {
    if (usable) {
      const hit = this.#stats.get(publicId);
      if (hit && Date.now() - hit.at < this.statMaxAgeMs) {
        this.metrics?.cacheLookup?.('stat', true);
        return hit;
      }
      this.metrics?.cacheLookup?.('stat', false);
    }
    let p = this.#inflight.get(publicId);
    if (!p) {
      const gen = this.#gen;
      const read = () => client.stat(ids).then((stat) => entryOf(publicId, ids, stat));
      p = usable && this.#statStore ? this.#statStore.load(publicId, ids, read) : read();
      this.#inflight.set(publicId, p);
      p.then(
        (entry) => {
          this.#inflight.delete(publicId);
          if (usable && gen === this.#gen) this.#stats.set(publicId, entry);
        },
        () => this.#inflight.delete(publicId),
      );
    }
    return p;
  }

  /**
   * A fresh cached stat, when caches are usable now (no lookup counted): the hot path answers
   * from it without a promise, and skips decoding the public id of a file it has seen (app.ts
   * fastFile).
   */
  cachedEntry(publicId: string): FileEntry | null {
    if (this.statMaxAgeMs <= 0 || this.journal.usable() !== true) return null;
    const hit = this.#stats.get(publicId);
    return hit && Date.now() - hit.at < this.statMaxAgeMs ? hit : null;
  }

  /** `f` is one the small-file cache takes (it is on, and the file no bigger than its entries). */
  keepsSmallFile(f: FileEntry): boolean {
    const files = this.#files;
    return files !== null && !this.slicesForAll && f.stat.size <= files.maxEntryBytes;
  }

  /** The small-file cache's bytes of `f` (whole), if it holds them now; nothing is read. */
  cachedBytes(f: FileEntry): Uint8Array<ArrayBuffer> | null {
    const hit = this.#files?.get(f.publicId);
    return hit && hit.length === f.stat.size && !this.slicesForAll ? hit : null;
  }

  /** A file's stat (tus HEAD and the like; see file()). */
  async stat(publicId: string, ids: FileIds, client = this.client): Promise<FileStat> {
    return (await this.file(publicId, ids, await this.cachesUsable(), client)).stat;
  }

  /**
   * The bytes of a small file (config `fileCache`), from memory or read whole (once, however
   * many ask at the same time) and kept. null when the file is not one the cache takes.
   */
  smallFile(
    f: FileEntry,
    usable: boolean,
  ): Uint8Array<ArrayBuffer> | Promise<Uint8Array<ArrayBuffer>> | null {
    const files = this.#files;
    if (!files || !usable || !this.keepsSmallFile(f)) return null;
    const hit = files.get(f.publicId);
    if (hit && hit.length === f.stat.size) {
      this.metrics?.cacheLookup?.('file', true);
      return hit;
    }
    this.metrics?.cacheLookup?.('file', false);
    let p = this.#fileReads.get(f.publicId);
    if (!p) {
      const gen = this.#gen;
      p = readWhole(this.client, f.ids, f.stat.size);
      this.#fileReads.set(f.publicId, p);
      p.then(
        (bytes) => {
          this.#fileReads.delete(f.publicId);
          if (gen === this.#gen) files.set(f.publicId, bytes);
        },
        () => this.#fileReads.delete(f.publicId),
      );
    }
    return p;
  }

  /** Files with a cached stat (bounded by `statCacheMax`). */
  get statCacheSize(): number {
    return this.#stats.size;
  }

  /** Bytes of small files held in memory (bounded by `fileCache.maxBytes`). */
  get fileCacheBytes(): number {
    return this.#files?.bytes ?? 0;
  }

  /** Whether the small-file cache holds this file now. */
  fileCached(publicId: string): boolean {
    return this.#files?.get(publicId) !== undefined;
  }

  /**
   * A file was deleted: dropped from this process's caches at once and written to the delete
   * journal, so every other gateway process drops it too (within 2 × `invalidationPollMs`), and
   * purged from the stat store (the Worker's edge cache) as far as it can be.
   */
  async deleted(publicId: string): Promise<void> {
    this.#drop(publicId);
    await Promise.all([this.journal.publish(publicId), this.#statStore?.purge(publicId)]);
  }

  /** deleted() without waiting for the journal (a failure to write it is logged). */
  forget(publicId: string): void {
    const p = this.deleted(publicId).catch((e: unknown) =>
      this.log.warn({ err: e, publicId }, 'a delete could not be written to the delete journal'),
    );
    // the Worker: the journal write and the edge purge outlive the reply
    this.#background?.(p);
  }

  #drop(publicId: string): void {
    this.metrics?.invalidation?.('file');
    this.#gen++;
    this.#stats.delete(publicId);
    this.#files?.delete(publicId);
    this.#fileReads.delete(publicId);
    this.#inflight.delete(publicId);
    this.slices?.forget(publicId);
  }

  /** Everything kept goes; answers under way are still shared, but not kept (see #gen). */
  #dropAll(): void {
    this.metrics?.invalidation?.('all');
    this.#gen++;
    this.#stats.clear();
    this.#files?.clear();
    this.slices?.clear();
  }

  policyFor(appId: string): DownloadPolicy {
    // own keys only: an app id like "constructor" must not find Object.prototype's
    const apps = this.cfg.downloads.apps;
    return (Object.hasOwn(apps, appId) ? apps[appId] : undefined) ?? this.cfg.downloads.default;
  }

  /** Base of URLs in replies: `publicUrl`, else the origin the request came to. */
  baseUrl(requestUrl: string): string {
    return (this.cfg.publicUrl ?? new URL(requestUrl).origin).replace(/\/+$/, '');
  }
}

/** Longest a stat is trusted where deletes are not shared (IsolateKvStore: the Worker). */
const UNSHARED_STAT_MS = 2000;

export function entryOf(publicId: string, ids: FileIds, stat: FileStat): FileEntry {
  const mtimeSec = Math.floor(stat.mtimeMs / 1000);
  return {
    at: Date.now(),
    stat,
    ids,
    publicId,
    etag: `"${toHex(stat.sha256)}"`,
    mtimeSec,
    lastModified: new Date(mtimeSec * 1000).toUTCString(),
  };
}

/** A whole small file (`size` bytes) in one buffer. */
async function readWhole(client: DsmClient, ids: FileIds, size: number): Promise<Uint8Array<ArrayBuffer>> {
  const reply = await client.download(ids, 0, size);
  const out = new Uint8Array(size);
  let at = 0;
  for await (const chunk of reply.stream) {
    if (at + chunk.length > size) throw new Error(`the storage sent more than ${size} bytes`);
    out.set(chunk, at);
    at += chunk.length;
  }
  if (at !== size || reply.length !== size) throw new Error(`the storage sent ${at} of ${size} bytes`);
  return out;
}
