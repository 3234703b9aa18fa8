import { LruMap } from '@dsm/common/lru';
import { type FileIds, fromHex, toHex } from '@dsm/packets';
import * as z from 'zod';
import { entryOf, type FileEntry, type GatewayLog, type StatStore } from './core.ts';
import { SliceCache, type SliceKey, type SliceStore } from './slices.ts';

/**
 * The Worker's edge cache (config `edgeCache`): files never change, so their bytes are kept in
 * the Cache API of the colo (`caches.default`) in aligned slices of `sliceBytes`, and their stat
 * for `statTtlMs`. The range arithmetic and the in-isolate sharing of slice reads are the Node
 * gateway's (slices.ts SliceCache, one per isolate here); this is its store, and the stat store
 * of GatewayCore.file().
 *
 * A delete through this Worker purges the stat and the slices it knows from its colo's cache; the
 * other colos (and the other isolates' memory, at most 2 s) keep serving the file until their
 * stat is older than `statTtlMs`: every reply starts from a stat, and a stat read from the
 * storage after the delete is a 404. Slices need no lifetime of their own (a slice is only found
 * through a live stat, ids are never reused); they go when the cache evicts them.
 */

const MiB = 1024 * 1024;

export const edgeCacheSchema = z
  .object({
    /** false: the Worker reads every download from the storage (no Cache API, no shared slices). */
    enabled: z.boolean().default(true),
    /** Size of the aligned slices kept in the Cache API (1 to 8 MiB). */
    sliceBytes: z
      .number()
      .int()
      .min(MiB)
      .max(8 * MiB)
      .default(2 * MiB),
    /**
     * How long a stat is trusted, in the Cache API and in isolate memory: a file deleted through
     * another colo (or around the gateway) is served at most this long after the delete.
     */
    statTtlMs: z.number().int().min(2000).max(86_400_000).default(60_000),
    /** Slices kept in each isolate's memory besides the Cache API (0: none). */
    memoryBytes: z
      .number()
      .int()
      .min(0)
      .max(64 * MiB)
      .default(16 * MiB),
  })
  .strict();
export type EdgeCacheConfig = z.infer<typeof edgeCacheSchema>;

/** The part of a Workers `Cache` (`caches.default`) used here. */
export interface EdgeCacheApi {
  match(key: string): Promise<Response | undefined>;
  put(key: string, res: Response): Promise<void>;
  delete(key: string): Promise<boolean>;
}

/** Cache-Control of a stored slice: immutable bytes, kept until evicted (30 days at most). */
const SLICE_CACHE_CONTROL = 'public, max-age=2592000, immutable';
/** Most slices a delete purges (each a Cache API call; the rest expire unreachable). */
const MAX_PURGE_SLICES = 64;
/** Files whose stored slices an isolate remembers for a delete to purge. */
const KNOWN_FILES = 1000;
/** A stat entry is a few hundred bytes of JSON; anything longer is not ours. */
const MAX_STAT_JSON = 4096;
/** Longest wait for the Cache API: a lookup that takes longer is a miss, a put or delete is given up. */
const CACHE_API_TIMEOUT_MS = 5000;

interface StoredStat {
  v: 1;
  at: number;
  size: number;
  mtimeMs: number;
  sha256: string;
  contentType: string;
}

function isStoredStat(x: unknown): x is StoredStat {
  const o = x as Partial<StoredStat> | null;
  return (
    typeof o === 'object' &&
    o !== null &&
    o.v === 1 &&
    Number.isSafeInteger(o.at) &&
    Number.isSafeInteger(o.size) &&
    (o.size as number) >= 0 &&
    Number.isSafeInteger(o.mtimeMs) &&
    typeof o.sha256 === 'string' &&
    /^[0-9a-f]{64}$/.test(o.sha256) &&
    typeof o.contentType === 'string'
  );
}

/** Exactly `length` bytes of a body, or null when it has fewer or more (read no further than that). */
async function readExactly(
  body: ReadableStream<Uint8Array> | null,
  length: number,
): Promise<Uint8Array | null> {
  if (!body) return length === 0 ? new Uint8Array(0) : null;
  const out = new Uint8Array(length);
  let at = 0;
  const reader = body.getReader();
  try {
    for (;;) {
      const r = await reader.read();
      if (r.done) return at === length ? out : null;
      if (at + r.value.length > length) return null;
      out.set(r.value, at);
      at += r.value.length;
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
}

export class EdgeCache implements StatStore, SliceStore {
  /** The isolate's slice cache: in-isolate sharing of reads, `memoryBytes` kept, this as its store. */
  readonly slices: SliceCache;
  readonly #api: EdgeCacheApi;
  readonly #ttlMs: number;
  /** StatStore: `statTtlMs`. */
  readonly maxAgeMs: number;
  readonly #log: GatewayLog;
  /** Origin and path under which the keys live (URLs the Worker never fetches). */
  readonly #base: string;
  readonly #loading = new Map<string, Promise<FileEntry>>();
  /** Slices this isolate stored or found, by file: what a delete here can purge. */
  readonly #known = new LruMap<string, { etag: string; sliceBytes: number; indices: Set<number> }>(
    KNOWN_FILES,
  );

  readonly #timeoutMs: number;

  constructor(
    cfg: EdgeCacheConfig,
    api: EdgeCacheApi,
    o: { keyOrigin: string; log: GatewayLog; timeoutMs?: number },
  ) {
    this.#api = api;
    this.#timeoutMs = o.timeoutMs ?? CACHE_API_TIMEOUT_MS;
    this.#ttlMs = cfg.statTtlMs;
    this.maxAgeMs = cfg.statTtlMs;
    this.#log = o.log;
    this.#base = `${o.keyOrigin.replace(/\/+$/, '')}/_dsm-edge/v1`;
    this.slices = new SliceCache({ sliceBytes: cfg.sliceBytes, maxBytes: cfg.memoryBytes, store: this });
  }

  /** The Cache API key of a file's stat. */
  statKey(publicId: string): string {
    return `${this.#base}/stat/${publicId}`;
  }

  /** The Cache API key of a slice (the ETag and the slicing are part of it). */
  sliceKey(k: Pick<SliceKey, 'publicId' | 'etag' | 'sliceBytes' | 'index'>): string {
    return `${this.#base}/slice/${k.publicId}/${k.etag.replace(/"/g, '')}/${k.sliceBytes}/${k.index}`;
  }

  // StatStore ----------------------------------------------------------------------------------

  load(publicId: string, ids: FileIds, read: () => Promise<FileEntry>): Promise<FileEntry> {
    const under = this.#loading.get(publicId);
    if (under) return under;
    const p = (async () => {
      const hit = await this.#getStat(publicId, ids);
      if (hit) return hit;
      const entry = await read();
      await this.#putStat(entry);
      return entry;
    })();
    this.#loading.set(publicId, p);
    const done = () => {
      if (this.#loading.get(publicId) === p) this.#loading.delete(publicId);
    };
    p.then(done, done);
    return p;
  }

  async purge(publicId: string): Promise<void> {
    this.#loading.delete(publicId);
    const stored = await this.#readStat(publicId).catch(() => null);
    const known = this.#known.get(publicId);
    this.#known.delete(publicId);
    const keys = new Set<string>([this.statKey(publicId)]);
    const add = (etag: string, sliceBytes: number, index: number) => {
      if (keys.size <= MAX_PURGE_SLICES) keys.add(this.sliceKey({ publicId, etag, sliceBytes, index }));
    };
    if (known) for (const i of known.indices) add(known.etag, known.sliceBytes, i);
    if (stored) {
      const S = this.slices.sliceBytes;
      const etag = `"${stored.sha256}"`;
      for (let i = 0; i * S < stored.size; i++) add(etag, S, i);
    }
    const results = await Promise.allSettled(
      [...keys].map((k) => this.#timed(this.#api.delete(k), 'delete')),
    );
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) {
      this.#log.warn(
        { err: (failed as PromiseRejectedResult).reason, publicId },
        'the edge cache could not purge a deleted file (its stat expires after edgeCache.statTtlMs)',
      );
    }
  }

  /** The stat entry of the cache, or null (none, or not one of ours). Throws on a Cache API failure. */
  #readStat(publicId: string): Promise<StoredStat | null> {
    return this.#timed(
      (async () => {
        const res = await this.#api.match(this.statKey(publicId));
        if (!res) return null;
        const len = res.headers.get('content-length');
        if (len !== null && Number(len) > MAX_STAT_JSON) {
          await res.body?.cancel();
          return null;
        }
        const text = await res.text();
        if (text.length > MAX_STAT_JSON) return null;
        let o: unknown;
        try {
          o = JSON.parse(text);
        } catch {
          return null;
        }
        return isStoredStat(o) ? o : null;
      })(),
      'stat lookup',
    );
  }

  /** `p`, or an error after the Cache API timeout. */
  #timed<T>(p: Promise<T>, what: string): Promise<T> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`the Cache API did not answer a ${what} within ${this.#timeoutMs} ms`)),
        this.#timeoutMs,
      );
    });
    return Promise.race([p, late]).finally(() => clearTimeout(timer));
  }

  async #getStat(publicId: string, ids: FileIds): Promise<FileEntry | null> {
    let s: StoredStat | null;
    try {
      s = await this.#readStat(publicId);
    } catch (e) {
      this.#log.warn({ err: e, publicId }, 'the edge cache could not read a stat');
      return null;
    }
    const now = Date.now();
    if (!s || now - s.at >= this.#ttlMs || s.at > now + 60_000) return null;
    const stat = { size: s.size, mtimeMs: s.mtimeMs, sha256: fromHex(s.sha256), contentType: s.contentType };
    // `at` stays the time of the storage's answer: the bound runs from there
    return { ...entryOf(publicId, ids, stat), at: s.at };
  }

  async #putStat(f: FileEntry): Promise<void> {
    const body: StoredStat = {
      v: 1,
      at: f.at,
      size: f.stat.size,
      mtimeMs: f.stat.mtimeMs,
      sha256: toHex(f.stat.sha256),
      contentType: f.stat.contentType,
    };
    const ageSec = Math.max(1, Math.ceil((f.at + this.#ttlMs - Date.now()) / 1000));
    try {
      await this.#timed(
        this.#api.put(
          this.statKey(f.publicId),
          new Response(JSON.stringify(body), {
            headers: { 'Content-Type': 'application/json', 'Cache-Control': `max-age=${ageSec}` },
          }),
        ),
        'stat put',
      );
    } catch (e) {
      this.#log.warn({ err: e, publicId: f.publicId }, 'the edge cache could not keep a stat');
    }
  }

  // SliceStore ---------------------------------------------------------------------------------

  async get(k: SliceKey): Promise<Uint8Array | null> {
    try {
      const bytes = await this.#timed(
        (async () => {
          const res = await this.#api.match(this.sliceKey(k));
          if (!res) return null;
          // a slice is at most 8 MiB; anything of another length is not this slice
          const len = res.headers.get('content-length');
          if (len !== null && Number(len) !== k.length) {
            await res.body?.cancel();
            return null;
          }
          return readExactly(res.body, k.length);
        })(),
        'slice lookup',
      );
      if (bytes) this.#know(k);
      return bytes;
    } catch (e) {
      this.#log.warn({ err: e, publicId: k.publicId }, 'the edge cache could not read a slice');
      return null;
    }
  }

  async put(k: SliceKey, bytes: Uint8Array): Promise<void> {
    try {
      await this.#timed(
        this.#api.put(
          this.sliceKey(k),
          new Response(bytes as Uint8Array<ArrayBuffer>, {
            headers: {
              'Content-Type': 'application/octet-stream',
              'Content-Length': String(bytes.length),
              'Cache-Control': SLICE_CACHE_CONTROL,
            },
          }),
        ),
        'slice put',
      );
      this.#know(k);
    } catch (e) {
      this.#log.warn({ err: e, publicId: k.publicId }, 'the edge cache could not keep a slice');
    }
  }

  #know(k: SliceKey): void {
    let f = this.#known.get(k.publicId);
    if (!f || f.etag !== k.etag || f.sliceBytes !== k.sliceBytes) {
      f = { etag: k.etag, sliceBytes: k.sliceBytes, indices: new Set() };
      this.#known.set(k.publicId, f);
    }
    if (f.indices.size < MAX_PURGE_SLICES) f.indices.add(k.index);
  }
}
