import { DsmError, ErrorCode } from '@dsm/common/errors';
import { type Address, type AddrsReply, Errno, type FileIds, type FileStat } from '@dsm/packets';
import { IdClient, StorageClient, TrackerClient, type UploadSource } from './clients.ts';
import type { RemoteError, StreamReply } from './connection.ts';
import { isRetryable, tryEach } from './failover.ts';
import { newFileId } from './file-id.ts';
import { Pool, type PoolOptions } from './pool.ts';
import { encodePublicId } from './public-id.ts';
import type { Transport } from './transport.ts';

export interface DsmClientOptions extends Partial<Omit<PoolOptions, 'transport'>> {
  trackers: readonly Address[];
  transport: Transport;
  /** How long a user → storages answer is reused (0 = ask every time). */
  locateCacheMs?: number;
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
export class DsmClient {
  readonly pool: Pool;
  readonly tracker: TrackerClient;
  readonly storage: StorageClient;
  readonly #cacheMs: number;
  readonly #cache = new Map<string, { at: number; reply: AddrsReply }>();

  constructor(opts: DsmClientOptions) {
    this.pool = new Pool({ ...opts, transport: opts.transport });
    this.tracker = new TrackerClient(this.pool, opts.trackers);
    this.storage = new StorageClient(this.pool);
    this.#cacheMs = opts.locateCacheMs ?? 2000;
  }

  idClient(servers: readonly Address[]): IdClient {
    return new IdClient(this.pool, servers);
  }

  async locate(appId: string, userId: string, fresh = false): Promise<AddrsReply> {
    const key = `${appId}\u0000${userId}`;
    const hit = this.#cache.get(key);
    if (!fresh && hit && Date.now() - hit.at < this.#cacheMs) return hit.reply;
    const reply = await this.tracker.storagesFor(appId, userId);
    if (reply.addrs.length === 0)
      throw new DsmError(ErrorCode.NO_STORAGE, `no active storage for group ${reply.group}`);
    if (this.#cacheMs > 0) this.#cache.set(key, { at: Date.now(), reply });
    return reply;
  }

  /** Runs `fn` on the user's storages in turn; re-asks the tracker once if all of them fail. */
  async #onStorages<T>(
    appId: string,
    userId: string,
    fn: (a: Address, group: string) => Promise<T>,
  ): Promise<T> {
    const first = await this.locate(appId, userId);
    try {
      return await tryEach(first.addrs, (a) => fn(a, first.group));
    } catch (e) {
      if (!isRetryable(e)) throw e;
      const again = await this.locate(appId, userId, true);
      return tryEach(again.addrs, (a) => fn(a, again.group));
    }
  }

  /**
   * Uploads to one of the user's storages, trying the next one on a retryable failure. When the
   * client chose the file id itself (or `freshFileId` says the caller made `fileId` with
   * `newFileId()` for this upload alone), "id exists" on a retry can only mean that an earlier
   * attempt of this call was stored although its reply was lost (the storage was killed or the
   * reply timed out after the commit): the upload then succeeded, and its stat is returned when
   * the stored size matches.
   */
  async upload(
    req: {
      appId: string;
      userId: string;
      fileId?: string;
      freshFileId?: boolean;
      contentType?: string;
      source: UploadSource;
    },
    onProgress?: (sent: number) => void,
  ): Promise<UploadResult> {
    const ids: FileIds = { appId: req.appId, userId: req.userId, fileId: req.fileId ?? newFileId() };
    const ownId = req.fileId === undefined || req.freshFileId === true;
    let group = '';
    let attempts = 0;
    const stat = await this.#onStorages(ids.appId, ids.userId, async (a, g) => {
      group = g;
      attempts++;
      try {
        return await this.storage.uploadExt(a, ids, req.contentType ?? '', req.source, onProgress);
      } catch (e) {
        const errno = (e as { errno?: number; remote?: boolean }).remote ? (e as RemoteError).errno : -1;
        if (!ownId || attempts < 2 || errno !== Errno.EXISTS) throw e;
        const st = await this.storage.stat(a, ids).catch(() => null);
        if (st?.size !== req.source.size) throw e;
        return st;
      }
    });
    return { publicId: encodePublicId(ids), ids, group, stat };
  }

  stat(ids: FileIds): Promise<FileStat> {
    return this.#onStorages(ids.appId, ids.userId, (a) => this.storage.stat(a, ids));
  }

  size(ids: FileIds): Promise<number> {
    return this.#onStorages(ids.appId, ids.userId, (a) => this.storage.size(a, ids));
  }

  delete(ids: FileIds): Promise<void> {
    return this.#onStorages(ids.appId, ids.userId, (a) => this.storage.delete(a, ids));
  }

  /** `length` 0 means to the end, as in the protocol. Fails over until the first byte. */
  download(ids: FileIds, offset = 0, length = 0): Promise<StreamReply> {
    return this.#onStorages(ids.appId, ids.userId, (a) =>
      this.storage.download(a, { ...ids, offset, size: length }),
    );
  }

  close(): Promise<void> {
    return this.pool.close();
  }
}
