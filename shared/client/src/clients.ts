import { DsmError, ErrorCode } from '@dsm/common/errors';
import {
  type Address,
  type AddrsReply,
  bufferedUpTo,
  type ClusterStatus,
  Command,
  DELETES_REPLY_MAX,
  type DeletesReply,
  type DownloadRequest,
  decodeAddrsReply,
  decodeClusterStatus,
  decodeDeletesReply,
  decodeI64Body,
  decodeIdRangeReply,
  decodeStatReply,
  decodeText,
  decodeUploadOffsetReply,
  encodeAddrsRequest,
  encodeDeletesRequest,
  encodeDownloadRequest,
  encodeIdRangeRequest,
  encodeIdRequest,
  encodeIds,
  encodeLocateRequest,
  encodeUploadAppendPrefix,
  encodeUploadCreate,
  encodeUploadExtPrefix,
  encodeUploadPrefix,
  exactly,
  type FileIds,
  type FileStat,
  ID_RANGE_REPLY_LENGTH,
  IDS_LENGTH,
  type IdRange,
  STAT_REPLY_LENGTH,
  type UploadOffsetReply,
} from '@dsm/packets';
import type { StreamReply } from './connection.ts';
import { isRetryableOnTracker, randomStart, tryEach } from './failover.ts';
import type { Pool } from './pool.ts';

/** Replies up to this size are read whole (group list, status JSON). */
const TEXT_REPLY_MAX = 4 * 1024 * 1024;

/** The most a buffered download (downloadBytes) holds in memory: more is a stream's work. */
export const MAX_BUFFERED_DOWNLOAD = 1024 * 1024;

/** A size a buffered download takes (1 to MAX_BUFFERED_DOWNLOAD bytes). */
const bufferable = (size: number): boolean =>
  Number.isSafeInteger(size) && size > 0 && size <= MAX_BUFFERED_DOWNLOAD;

/** Id servers: next id for a key, failing over across servers on connection errors. */
export class IdClient {
  constructor(
    readonly pool: Pool,
    readonly servers: readonly Address[],
    /** Named to the id servers with every request (REQUEST_CONTEXT; their logs' `rid`). */
    readonly requestId?: string,
  ) {}

  nextId(key: string): Promise<number> {
    const body = encodeIdRequest(key);
    return tryEach(
      this.servers,
      (a) =>
        this.pool.use(
          a,
          async (c) =>
            decodeI64Body(await c.request(Command.ID_GET, body, Command.ID_REPLY, exactly(8)), 'id'),
          true,
          this.requestId,
        ),
      randomStart(this.servers.length),
    );
  }

  /**
   * `count` consecutive ids for `key` in one request (extension 41): [first, first + count) is
   * reserved for the caller alone. A server without the extension (the seed's) answers
   * `Unknown Command` (errno UNKNOWN_COMMAND); callers fall back to `nextId`.
   */
  nextRange(key: string, count: number): Promise<IdRange> {
    const body = encodeIdRangeRequest({ key, count });
    return tryEach(
      this.servers,
      (a) =>
        this.pool.use(
          a,
          async (c) =>
            decodeIdRangeReply(
              await c.request(Command.ID_GET_RANGE, body, Command.ID_REPLY, exactly(ID_RANGE_REPLY_LENGTH)),
            ),
          true,
          this.requestId,
        ),
      randomStart(this.servers.length),
    );
  }
}

/** Trackers: storages for a user, group list, status; any tracker answers the same. */
export class TrackerClient {
  constructor(
    readonly pool: Pool,
    readonly trackers: readonly Address[],
    /** Named to the trackers with every request (REQUEST_CONTEXT; their logs' `rid`). */
    readonly requestId?: string,
  ) {}

  #ask(command: number, body: Uint8Array, max = TEXT_REPLY_MAX): Promise<Uint8Array> {
    return tryEach(
      this.trackers,
      (a) =>
        this.pool.use(
          a,
          (c) => c.request(command, body, Command.TRACKER_REPLY, bufferedUpTo(max)),
          true,
          this.requestId,
        ),
      randomStart(this.trackers.length),
      isRetryableOnTracker,
    );
  }

  async storagesFor(appId: string, userId: string): Promise<AddrsReply> {
    const body = encodeAddrsRequest({ appId, userId, fileId: '' });
    return decodeAddrsReply(await this.#ask(Command.TRACKER_ADDRS, body, 64 * 1024));
  }

  /**
   * The storages of a user the cluster already routed (17): a user without a route is a
   * NOT_FOUND error reply, and nothing is created (reads use this; uploads use storagesFor).
   */
  async storagesOf(ids: FileIds): Promise<AddrsReply> {
    return decodeAddrsReply(await this.#ask(Command.TRACKER_LOCATE, encodeLocateRequest(ids), 64 * 1024));
  }

  async groupsText(): Promise<string> {
    return decodeText(await this.#ask(Command.TRACKER_GROUPS, new Uint8Array(0)));
  }

  async status(tracker?: Address): Promise<ClusterStatus> {
    if (tracker) {
      const b = await this.pool.use(
        tracker,
        (c) =>
          c.request(
            Command.TRACKER_STATUS,
            new Uint8Array(0),
            Command.TRACKER_REPLY,
            bufferedUpTo(TEXT_REPLY_MAX),
          ),
        true,
        this.requestId,
      );
      return decodeClusterStatus(b);
    }
    return decodeClusterStatus(await this.#ask(Command.TRACKER_STATUS, new Uint8Array(0)));
  }
}

export async function ping(pool: Pool, addr: Address, replyCommand: number): Promise<void> {
  await pool.use(addr, (c) => c.request(Command.PING, new Uint8Array(0), replyCommand, exactly(0)), true);
}

export interface UploadSource {
  size: number;
  /**
   * Called again for a retry on another storage, so it must be able to start over and give the
   * same bytes, unless `replayable` is false.
   */
  open(): AsyncIterable<Uint8Array>;
  /**
   * false: the bytes can be read only once (an HTTP request body streamed through). DsmClient
   * then opens the source at most once: after a failure that happened once it was opened, that
   * failure is the answer (no retry on another member), except for a lost reply after the whole
   * body was sent, which DsmClient resolves by asking the group (see `DsmClient.upload`).
   */
  replayable?: boolean;
}

/** One storage server's operations (no failover; see DsmClient). */
export class StorageClient {
  constructor(
    readonly pool: Pool,
    /** Named to the storages with every request (REQUEST_CONTEXT; their logs' `rid`). */
    readonly requestId?: string,
  ) {}

  #call(addr: Address, command: number, body: Uint8Array, ok = exactly(0)): Promise<Uint8Array> {
    return this.pool.use(
      addr,
      (c) => c.request(command, body, Command.STORAGE_REPLY, ok),
      true,
      this.requestId,
    );
  }

  /** Seed upload (70): the reply carries nothing. */
  upload(addr: Address, ids: FileIds, source: UploadSource, onProgress?: (n: number) => void): Promise<void> {
    const prefix = encodeUploadPrefix({ ...ids, size: source.size });
    return this.pool.use(
      addr,
      async (c) => {
        await c.requestStreamed(
          Command.STORAGE_UPLOAD,
          prefix,
          source.size,
          source.open(),
          Command.STORAGE_REPLY,
          exactly(0),
          onProgress,
        );
      },
      false,
      this.requestId,
    );
  }

  /** Upload with a content type (80); the reply is the new file's stat (size, sha-256, …). */
  uploadExt(
    addr: Address,
    ids: FileIds,
    contentType: string,
    source: UploadSource,
    onProgress?: (n: number) => void,
  ): Promise<FileStat> {
    const prefix = encodeUploadExtPrefix({ ...ids, contentType, size: source.size });
    return this.pool.use(
      addr,
      async (c) =>
        decodeStatReply(
          await c.requestStreamed(
            Command.STORAGE_UPLOAD_EXT,
            prefix,
            source.size,
            source.open(),
            Command.STORAGE_REPLY,
            exactly(STAT_REPLY_LENGTH),
            onProgress,
          ),
        ),
      false,
      this.requestId,
    );
  }

  async size(addr: Address, ids: FileIds): Promise<number> {
    return decodeI64Body(await this.#call(addr, Command.STORAGE_SIZE, encodeIds(ids), exactly(8)), 'size');
  }

  async stat(addr: Address, ids: FileIds): Promise<FileStat> {
    return decodeStatReply(
      await this.#call(addr, Command.STORAGE_STAT, encodeIds(ids), exactly(STAT_REPLY_LENGTH)),
    );
  }

  async delete(addr: Address, ids: FileIds): Promise<void> {
    await this.#call(addr, Command.STORAGE_DELETE, encodeIds(ids));
  }

  /** The group's deletes after sequence number `since` (81; see messages/storage.ts). */
  async deletesSince(addr: Address, since: number): Promise<DeletesReply> {
    return decodeDeletesReply(
      await this.#call(
        addr,
        Command.STORAGE_DELETES,
        encodeDeletesRequest(since),
        bufferedUpTo(DELETES_REPLY_MAX),
      ),
    );
  }

  /**
   * Download (72). The returned stream must be read to the end (or abandoned, which closes the
   * connection); the pooled connection is released when the stream finishes.
   */
  async download(addr: Address, req: DownloadRequest): Promise<StreamReply> {
    const body = encodeDownloadRequest(req);
    let release!: () => void;
    const released = new Promise<void>((r) => {
      release = r;
    });
    let ready!: (s: StreamReply) => void;
    let failed!: (e: unknown) => void;
    const got = new Promise<StreamReply>((res, rej) => {
      ready = res;
      failed = rej;
    });
    this.pool
      .use(
        addr,
        async (c) => {
          const r = await c.requestStream(Command.STORAGE_DOWNLOAD, body, Command.STORAGE_REPLY);
          const stream: AsyncIterable<Uint8Array> = {
            async *[Symbol.asyncIterator]() {
              try {
                yield* r.stream;
              } finally {
                release();
              }
            },
          };
          ready({ ...r, stream });
          await released;
        },
        false,
        this.requestId,
      )
      .catch(failed);
    return got;
  }

  /**
   * A small download (72) read whole: exactly `req.size` bytes (1 to MAX_BUFFERED_DOWNLOAD),
   * the reply taken as one buffered frame (no stream, the connection back in the pool at once).
   * A storage that offers another length breaks the frame rule: a protocol error, and that
   * connection is closed.
   */
  downloadBytes(addr: Address, req: DownloadRequest): Promise<Uint8Array> {
    if (!bufferable(req.size)) {
      return Promise.reject(
        new DsmError(
          ErrorCode.BAD_INPUT,
          `a buffered download takes 1 to ${MAX_BUFFERED_DOWNLOAD} bytes, not ${req.size}: use download()`,
        ),
      );
    }
    return this.pool.request(
      addr,
      Command.STORAGE_DOWNLOAD,
      encodeDownloadRequest(req),
      Command.STORAGE_REPLY,
      exactly(req.size),
      this.requestId,
    );
  }

  async uploadCreate(addr: Address, ids: FileIds, totalSize: number, contentType: string): Promise<number> {
    const b = await this.#call(
      addr,
      Command.STORAGE_UPLOAD_CREATE,
      encodeUploadCreate({ ...ids, totalSize, contentType }),
      exactly(8),
    );
    return decodeI64Body(b, 'offset');
  }

  /** Appends `length` bytes at `offset`; returns the new offset (after fsync on the storage). */
  uploadAppend(
    addr: Address,
    ids: FileIds,
    offset: number,
    length: number,
    source: AsyncIterable<Uint8Array>,
  ): Promise<number> {
    const prefix = encodeUploadAppendPrefix({ ...ids, offset, length });
    return this.pool.use(
      addr,
      async (c) =>
        decodeI64Body(
          await c.requestStreamed(
            Command.STORAGE_UPLOAD_APPEND,
            prefix,
            length,
            source,
            Command.STORAGE_REPLY,
            exactly(8),
          ),
          'offset',
        ),
      false,
      this.requestId,
    );
  }

  async uploadOffset(addr: Address, ids: FileIds): Promise<UploadOffsetReply> {
    return decodeUploadOffsetReply(
      await this.#call(addr, Command.STORAGE_UPLOAD_OFFSET, encodeIds(ids), exactly(16)),
    );
  }

  async uploadCommit(addr: Address, ids: FileIds): Promise<FileStat> {
    return decodeStatReply(
      await this.#call(addr, Command.STORAGE_UPLOAD_COMMIT, encodeIds(ids), exactly(STAT_REPLY_LENGTH)),
    );
  }

  async uploadAbort(addr: Address, ids: FileIds): Promise<void> {
    await this.#call(addr, Command.STORAGE_UPLOAD_ABORT, encodeIds(ids));
  }
}

export { IDS_LENGTH };
