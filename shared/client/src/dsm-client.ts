import { DsmError, ErrorCode, isDsmError } from '@dsm/common/errors';
import { LruMap } from '@dsm/common/lru';
import { type Address, type AddrsReply, Errno, type FileIds, type FileStat, sameBytes } from '@dsm/packets';
import { IdClient, StorageClient, TrackerClient, type UploadSource } from './clients.ts';
import { isRemoteError, type StreamReply } from './connection.ts';
import { isRetryable, tryEach } from './failover.ts';
import { newFileId } from './file-id.ts';
import { Pool, type PoolOptions } from './pool.ts';
import { encodePublicId } from './public-id.ts';
import type { Sha256Hasher, Transport } from './transport.ts';

export interface DsmClientOptions extends Partial<Omit<PoolOptions, 'transport'>> {
  trackers: readonly Address[];
  transport: Transport;
  /** How long a user → storages answer is reused (0 = ask every time). */
  locateCacheMs?: number;
  /** Most users whose answer is cached (least recently used go first). Default 10,000. */
  locateCacheMax?: number;
  /**
   * Pauses before sending a `freshFileId` upload again after BUSY (a killed storage's claim on
   * the id, which expires 6 s after its last refresh); default 2, 2.5 and 3 s.
   */
  busyWaitsMs?: readonly number[];
}

export interface UploadResult {
  publicId: string;
  ids: FileIds;
  group: string;
  stat: FileStat;
}

/**
 * The client most callers want: asks a tracker where a user's files live (cached briefly),
 * then talks to the storages of that group, trying the next member when one fails before
 * anything was committed or sent.
 */
export interface UploadRequest {
  appId: string;
  userId: string;
  /** Default: a new id made here (the client's own). */
  fileId?: string;
  /** `fileId` was made with `newFileId()` for this upload alone: treat it as the client's own. */
  freshFileId?: boolean;
  contentType?: string;
  source: UploadSource;
}

export class DsmClient {
  readonly pool: Pool;
  readonly tracker: TrackerClient;
  readonly storage: StorageClient;
  readonly #cacheMs: number;
  readonly #cache: LruMap<string, { at: number; reply: AddrsReply }>;
  readonly #sha256: (() => Sha256Hasher) | undefined;
  readonly #busyWaitsMs: readonly number[];
  readonly #opts: DsmClientOptions;
  /** The request id named to every node this client asks (see forRequest). */
  readonly requestId: string | undefined;

  constructor(opts: DsmClientOptions, scope?: { of: DsmClient; requestId: string }) {
    const of = scope?.of;
    this.requestId = scope?.requestId;
    this.pool = of ? of.pool : new Pool({ ...opts, transport: opts.transport });
    this.tracker = new TrackerClient(this.pool, opts.trackers, this.requestId);
    this.storage = new StorageClient(this.pool, this.requestId);
    this.#cacheMs = opts.locateCacheMs ?? 2000;
    this.#cache = of ? of.#cache : new LruMap(opts.locateCacheMax ?? 10_000);
    this.#sha256 = opts.transport.sha256?.bind(opts.transport);
    this.#busyWaitsMs = opts.busyWaitsMs ?? [2000, 2500, 3000];
    this.#opts = opts;
  }

  /**
   * This client for the work of one request: the same pool and caches, and every request it
   * sends to a node names `requestId` (REQUEST_CONTEXT), so the nodes' log lines of that work
   * carry it as `rid`. Cheap (three small objects); `close()` of the result closes the pool.
   */
  forRequest(requestId: string | undefined): DsmClient {
    if (requestId === undefined || requestId === this.requestId) return this;
    return new DsmClient(this.#opts, { of: this, requestId });
  }

  idClient(servers: readonly Address[]): IdClient {
    return new IdClient(this.pool, servers, this.requestId);
  }

  /** Users with a cached answer (bounded by `locateCacheMax`). */
  get locateCacheSize(): number {
    return this.#cache.size;
  }

  /** A fresh cached `locate` answer, or undefined. */
  #cachedLocate(appId: string, userId: string): AddrsReply | undefined {
    if (this.#cacheMs <= 0) return undefined;
    const hit = this.#cache.get(`${appId}\u0000${userId}`);
    return hit && Date.now() - hit.at < this.#cacheMs ? hit.reply : undefined;
  }

  /**
   * The storages of a user's group. Uploads route (`lookupOnly` false: the tracker assigns a
   * group to a new user); reads look up only (a user without a route is NOT_FOUND and the
   * tracker records nothing). `fileId` is only sent with a lookup, for the NOT_FOUND text.
   */
  async locate(
    appId: string,
    userId: string,
    fresh = false,
    lookup?: { fileId: string },
  ): Promise<AddrsReply> {
    if (!fresh) {
      const known = this.#cachedLocate(appId, userId);
      if (known) return known;
    }
    return this.#askTracker(appId, userId, lookup);
  }

  /** locate's answer from a tracker (then cached). */
  async #askTracker(appId: string, userId: string, lookup?: { fileId: string }): Promise<AddrsReply> {
    const reply = lookup
      ? await this.tracker.storagesOf({ appId, userId, fileId: lookup.fileId })
      : await this.tracker.storagesFor(appId, userId);
    if (reply.addrs.length === 0)
      throw new DsmError(ErrorCode.NO_STORAGE, `no active storage for group ${reply.group}`);
    if (this.#cacheMs > 0) this.#cache.set(`${appId}\u0000${userId}`, { at: Date.now(), reply });
    return reply;
  }

  /**
   * Runs `fn` on the user's storages in turn while its failure is `retryable`; re-asks the
   * tracker once if all of them fail that way. With the user's storages cached, the first
   * attempt starts at once (Pool.use then sends on an idle connection in the same turn).
   */
  onStorages<T>(
    appId: string,
    userId: string,
    fn: (a: Address, group: string, addrs: readonly Address[]) => Promise<T>,
    retryable: (e: unknown) => boolean = isRetryable,
    lookup?: { fileId: string },
  ): Promise<T> {
    const onEach = (r: AddrsReply) => tryEach(r.addrs, (a) => fn(a, r.group, r.addrs), 0, retryable);
    const attempt = (r: AddrsReply) =>
      onEach(r).catch((e: unknown) => {
        if (!retryable(e)) throw e;
        return this.locate(appId, userId, true, lookup).then(onEach);
      });
    const known = this.#cachedLocate(appId, userId);
    return known ? attempt(known) : this.#askTracker(appId, userId, lookup).then(attempt);
  }

  /**
   * Uploads to one of the user's storages, trying the next one on a retryable failure (a source
   * with `replayable: false` only until it was opened).
   *
   * A reply can be lost after the storage committed (the storage was killed, the connection
   * reset, or the reply timed out). When the file id is the client's own (generated here, or
   * the caller says `freshFileId`: made with `newFileId()` for this upload alone), nobody else
   * can have stored that id, so the file's existence answers the question:
   * - the whole body was sent and then the connection closed, reset or timed out: the group is
   *   asked for the file's stat (the other members first, since they share the store, then the
   *   same one). A file of the size sent is this upload when the id was made here
   *   (`newFileId`: time, 64 CSPRNG bits and a counter; only this call ever sent it, and the
   *   storage commits a body whole or not at all): nothing is hashed. Where the caller gave
   *   its id (`freshFileId`), the file must also have the sha-256 of the bytes sent when the
   *   runtime hashes (`Transport.sha256`), since the caller may have sent that id before. Its
   *   stat is returned. Otherwise (not found,
   *   or no member answers) the failure stands, and a replayable source is sent again to the
   *   next member as before;
   * - "id exists" on a retry (a replayable source sent again) is taken the same way, after the
   *   same size/sha-256 check;
   * - BUSY on a retry: another member still holds the claim on the id, taken by an earlier
   *   attempt of this call whose storage was killed (the claim lapses 6 s after its last refresh) or is still
   *   slow. When it made the id itself (no `fileId` given) and the source is replayable, the
   *   client starts over once under a fresh id: the earlier attempt was never acknowledged, so
   *   at worst it leaves an unreferenced copy, where the caller would otherwise get a failure.
   *   A caller that passed `fileId` with `freshFileId` may have recorded that id already: the
   *   client waits the claim out (`busyWaitsMs`, 7.5 s in all against the storages' 6 s claim
   *   expiry) and sends again under the same id. Any other caller-chosen id keeps the error.
   */
  async upload(req: UploadRequest, onProgress?: (sent: number) => void): Promise<UploadResult> {
    const ownId = req.fileId === undefined || req.freshFileId === true;
    const fileId = req.fileId ?? newFileId();
    for (let round = 0; ; round++) {
      try {
        return await this.#uploadAs(req, fileId, ownId, onProgress);
      } catch (e) {
        if (!isRemoteError(e, Errno.BUSY) || !ownId || req.source.replayable === false) throw e;
        // an id made here: start over at once under another
        if (req.fileId === undefined) return this.#uploadAs(req, newFileId(), true, onProgress);
        // the caller's fresh id (it may have recorded it): wait out the dead holder's claim
        const wait = this.#busyWaitsMs[round];
        if (wait === undefined) throw e;
        await new Promise((r) => setTimeout(r, wait));
      }
    }
  }

  async #uploadAs(
    req: UploadRequest,
    fileId: string,
    ownId: boolean,
    onProgress?: (sent: number) => void,
  ): Promise<UploadResult> {
    const ids: FileIds = { appId: req.appId, userId: req.userId, fileId };
    const replayable = req.source.replayable !== false;
    // An id made here needs no hash: the size decides (see `upload`). With the caller's fresh
    // id, a one-shot body is hashed while it goes out (it cannot be read again to check); a
    // replayable one is read again only if a check needs its hash.
    const sha256 = req.fileId === undefined ? undefined : this.#sha256;
    const hashWhileSending = ownId && !replayable ? sha256 : undefined;
    let opened = false;
    let sentDigest: Uint8Array | undefined;
    let group = '';
    let attempts = 0;
    const isOurs = async (st: FileStat): Promise<boolean> => {
      if (st.size !== req.source.size) return false;
      if (!sentDigest && replayable && sha256) {
        // the same bytes again; a source that cannot be read now leaves the size to decide
        sentDigest = await hashSource(req.source, sha256()).catch(() => undefined);
      }
      return !sentDigest || sameBytes(st.sha256, sentDigest);
    };
    const stat = await this.onStorages(
      ids.appId,
      ids.userId,
      async (a, g, addrs) => {
        group = g;
        attempts++;
        const send = trackedSource(req.source, hashWhileSending, () => {
          opened = true;
        });
        try {
          return await this.storage.uploadExt(a, ids, req.contentType ?? '', send.source, onProgress);
        } catch (e) {
          if (!ownId) throw e;
          if (send.complete) sentDigest ??= send.digest();
          if (send.complete && isLostReply(e)) {
            const st = await this.#statInGroup(ids, a, addrs);
            if (st && (await isOurs(st))) return st;
            throw e;
          }
          if (attempts < 2 || !isRemoteError(e, Errno.EXISTS)) throw e;
          const st = await this.storage.stat(a, ids).catch(() => null);
          if (st && (await isOurs(st))) return st;
          throw e;
        }
      },
      (e) => isRetryable(e) && (replayable || !opened),
    );
    return { publicId: encodePublicId(ids), ids, group, stat };
  }

  /**
   * The stat of `ids` from the group, or null when no member has it or none answers. The members
   * other than `failed` are asked first (they share the store; `failed` may be dead), then
   * `failed` itself (its connection may be all that failed).
   */
  async #statInGroup(ids: FileIds, failed: Address, addrs: readonly Address[]): Promise<FileStat | null> {
    const same = (x: Address) => x.host === failed.host && x.port === failed.port;
    const order = [...addrs.filter((x) => !same(x)), failed];
    try {
      return await tryEach(order, (x) => this.storage.stat(x, ids));
    } catch {
      return null;
    }
  }

  // Reads and deletes look the user's route up and never create one (TRACKER_LOCATE).
  stat(ids: FileIds): Promise<FileStat> {
    return this.onStorages(ids.appId, ids.userId, (a) => this.storage.stat(a, ids), isRetryable, ids);
  }

  size(ids: FileIds): Promise<number> {
    return this.onStorages(ids.appId, ids.userId, (a) => this.storage.size(a, ids), isRetryable, ids);
  }

  delete(ids: FileIds): Promise<void> {
    return this.onStorages(ids.appId, ids.userId, (a) => this.storage.delete(a, ids), isRetryable, ids);
  }

  /** `length` 0 means to the end, as in the protocol. Fails over until the first byte. */
  download(ids: FileIds, offset = 0, length = 0): Promise<StreamReply> {
    return this.onStorages(
      ids.appId,
      ids.userId,
      (a) => this.storage.download(a, { ...ids, offset, size: length }),
      isRetryable,
      ids,
    );
  }

  /**
   * `length` (> 0, small: the reply is held whole) bytes from `offset`, read as one buffered
   * frame; fails over like download().
   */
  downloadBytes(ids: FileIds, offset: number, length: number): Promise<Uint8Array> {
    return this.onStorages(
      ids.appId,
      ids.userId,
      // named, not spread (an object spread per request was measurable on the small GET)
      (a) =>
        this.storage.downloadBytes(a, {
          appId: ids.appId,
          userId: ids.userId,
          fileId: ids.fileId,
          offset,
          size: length,
        }),
      isRetryable,
      ids,
    );
  }

  close(): Promise<void> {
    return this.pool.close();
  }
}

/** A reply that never came: the connection closed or reset, or the reply timed out. */
export function isLostReply(e: unknown): boolean {
  return !isRemoteError(e) && isDsmError(e, ErrorCode.SOCKET, ErrorCode.TIMEOUT);
}

/**
 * One attempt's view of an upload source: whether the storage was handed the whole body (the
 * source ran to its end, so every chunk was written) and, with `hasher`, the sha-256 of the
 * bytes handed over.
 */
function trackedSource(
  src: UploadSource,
  hasher: (() => Sha256Hasher) | undefined,
  onOpen: () => void,
): { source: UploadSource; readonly complete: boolean; digest(): Uint8Array | undefined } {
  let complete = false;
  let h: Sha256Hasher | undefined;
  const source: UploadSource = {
    size: src.size,
    replayable: src.replayable,
    open() {
      onOpen();
      const inner = src.open();
      h = hasher?.();
      return {
        async *[Symbol.asyncIterator]() {
          let n = 0;
          for await (const chunk of inner) {
            h?.update(chunk);
            n += chunk.length;
            yield chunk;
          }
          // reached only when the sender asked for more after writing the last chunk
          complete = n === src.size;
        },
      };
    },
  };
  return {
    source,
    get complete() {
      return complete;
    },
    digest: () => (complete ? h?.digest() : undefined),
  };
}

async function hashSource(src: UploadSource, h: Sha256Hasher): Promise<Uint8Array> {
  for await (const chunk of src.open()) h.update(chunk);
  return h.digest();
}
