import { closeSync, linkSync, mkdirSync, openSync, readSync } from 'node:fs';
import { type FileHandle, link, mkdir, open, readlink, realpath, rename, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { DsmError, ErrorCode, errorCodeOf, messageOf } from '@dsm/common';
import { type FileTableName, isOutcomeUnknown, isUniqueViolation } from '@dsm/db';
import {
  DELETES_MAX,
  type DeletesReply,
  decodeDeletesRequest,
  decodeDownloadRequest,
  decodeIdsRequest,
  decodeUploadExtPrefix,
  decodeUploadPrefix,
  Errno,
  encodeDeletesReply,
  encodeI64Body,
  encodeStatReply,
  type FileStat,
  HEADER_LENGTH,
  readUserIdBytes,
} from '@dsm/packets';
import type { RequestContext } from '@dsm/server';
import { sql } from 'kysely';
import { journalName } from './commit-journal.ts';
import { checkAppId, checkFileId, checkUserId, exists, ioFailure, notFound, type StorageEnv } from './env.ts';
import {
  type DiskSpace,
  EARLY_SYNC_BYTES,
  fsyncDir,
  hashOpenFile,
  mkdirDurable,
  moveNoReplace,
  type Received,
  readChunks,
  receiveInto,
  removeQuiet,
} from './fs-util.ts';
import { FileLock, LinkClaim, UPLOAD_CLAIM_TTL_MS, type UploadClaim } from './lock.ts';
import { dbFailure, type FileMeta, type Found, type Owner, ownerOf } from './meta.ts';
import type { OpenFile } from './open-files.ts';
import { fileTableFor, pathForId } from './seed-rules.ts';
import { isValidContentType, SNIFF_BYTES, sniffContentType } from './sniff.ts';

/** Node's own I/O errors carry `syscall`; stream/protocol errors do not. */
export const isSystemError = (e: unknown): boolean =>
  typeof e === 'object' && e !== null && 'syscall' in e && errorCodeOf(e) !== undefined;

const SHA256_HEX = /^[0-9a-f]{64}$/;

export function checkContentType(ct: string): void {
  if (!isValidContentType(ct)) {
    throw new DsmError(ErrorCode.BAD_INPUT, `Invalid Content Type: ${ct}`, Errno.BAD_FIELD);
  }
}

/** Refuses an upload that would leave less than `reserveBytes` free on the store folder. */
/** How long one free-space reading serves uploads (a statfs per upload is slow on GlusterFS). */
const SPACE_READING_MS = 1000;

/**
 * Refuses an upload that would leave less than `reserveBytes` free. The free space is a reading
 * at most SPACE_READING_MS old, less what uploads accepted since then will take (so a burst of
 * uploads cannot overrun the reserve).
 */
export async function checkSpace(env: StorageEnv, storeIndex: number, bytes: number): Promise<void> {
  const reader = env.stores.space(storeIndex);
  let space: DiskSpace;
  try {
    const last = reader.last;
    space = last && Date.now() - last.atMs < SPACE_READING_MS ? last.space : await reader.read();
  } catch (e) {
    env.log.warn({ err: e }, 'cannot read free space; accepting the upload');
    return;
  }
  const free = space.freeBytes;
  if (free - bytes < env.config.reserveBytes) {
    throw new DsmError(
      ErrorCode.NO_SPACE,
      `No Space Left: ${bytes} bytes needed, ${free} free, ${env.config.reserveBytes} reserved`,
      Errno.NO_SPACE,
    );
  }
  space.freeBytes -= bytes;
}

/**
 * Refuses a file id already recorded in this user's table (EXISTS), and with `orUpload` also one
 * a resumable upload holds; a look-up that fails is the seed's INSERT error (see dbFailure).
 * The one check before an upload's bytes are read and before a resumable upload completes.
 */
export async function refuseExisting(
  env: StorageEnv,
  table: FileTableName,
  fileId: string,
  { orUpload }: { orUpload: boolean },
): Promise<void> {
  let found: boolean;
  try {
    if (orUpload) {
      // one statement for both look-ups (a small upload's only reads)
      const r = await sql<{ n: number }>`SELECT 1 AS n FROM ${sql.table(table)} WHERE id = ${fileId}
        UNION ALL SELECT 1 AS n FROM t_upload WHERE id = ${fileId} LIMIT 1`.execute(env.db);
      found = r.rows.length > 0;
    } else {
      found = await env.meta.exists(table, fileId);
    }
  } catch (e) {
    throw dbFailure(e, `INSERT Database Fail, Fileid: ${fileId}`);
  }
  if (found) throw exists(fileId);
}

/**
 * Moves a complete, fsynced file into its final place `<store>/<d1>/<d2>/<d3>/<T>_<d4>`:
 * creates the folders, never replaces an existing file (a new id is taken then), fsyncs the
 * folder. Returns the final path.
 */
export async function placeFinal(
  env: StorageEnv,
  storeIndex: number,
  src: string,
  fileId: string,
  firstId: number,
): Promise<string> {
  let id = firstId;
  for (let attempt = 0; ; attempt++) {
    const finalPath = pathForId(env.stores.path(storeIndex), id, Date.now() / 1000);
    try {
      await mkdirDurable(dirname(finalPath));
      await moveNoReplace(src, finalPath);
      await fsyncDir(dirname(finalPath));
      return finalPath;
    } catch (e) {
      if (errorCodeOf(e) === 'EEXIST' && attempt < 3) {
        env.log.warn({ path: finalPath }, 'file path already taken; asking for another id');
        id = await env.nextId(storeIndex);
        continue;
      }
      throw ioFailure(`Receive and Save File Fail, Fileid: ${fileId}`, e);
    }
  }
}

/**
 * Records a new file; on failure the file is removed again, unless the database was lost after
 * the INSERT was sent: then the row may exist, and a row must never point at a missing file,
 * so the file stays (at worst a file without a row, which costs only space).
 */
export async function recordFile(env: StorageEnv, meta: FileMeta, undo: () => Promise<void>): Promise<void> {
  try {
    await env.meta.insert(meta);
  } catch (e) {
    if (isOutcomeUnknown(e)) {
      env.log.warn(
        { err: messageOf(e), fileId: meta.fileId, path: meta.path },
        'database lost during the INSERT; the file is kept in case the row was written',
      );
    } else {
      await undo().catch((u) => env.log.error({ err: u, path: meta.path }, 'cannot undo a failed upload'));
    }
    if (isUniqueViolation(e)) throw exists(meta.fileId);
    throw dbFailure(e, `INSERT Database Fail, Fileid: ${meta.fileId}`);
  }
}

export function statOf(m: FileMeta): FileStat {
  return {
    size: m.size,
    mtimeMs: m.mtimeMs ?? 0,
    sha256: Buffer.from(m.sha256 ?? '', 'hex'),
    contentType: m.contentType ?? '',
  };
}

/** Uploads up to this size on a local store are received in memory and written by the small-file writer. */
const SMALL_UPLOAD_BYTES = 64 * 1024;

/** What an upload does with its temp file. */
type TempFile = Pick<FileHandle, 'writev' | 'sync' | 'datasync' | 'close'>;

/**
 * A small upload on a local store, received in memory (at most SMALL_UPLOAD_BYTES, the size
 * its header declared) and then handed whole to the small-file writer (small-writer.ts), which
 * creates, writes, fsyncs and links its temp file off the main thread. The temp file is
 * created first, empty, where a link claim hard-links it.
 */
export class MemoryTempFile implements TempFile {
  readonly data: Buffer;
  /** The temp file was created (empty) by open(). */
  readonly exists: boolean;
  /** Where a write without a position goes (as a file's own position). */
  #pos = 0;

  private constructor(size: number, exists: boolean) {
    // its own ArrayBuffer: moved to the writer's thread, not copied
    this.data = Buffer.allocUnsafeSlow(size);
    this.exists = exists;
  }

  /** `create`: make the (empty) temp file now, synchronously (microseconds on a local store). */
  static open(size: number, path: string, dir: string, create: boolean): MemoryTempFile {
    if (!create) return new MemoryTempFile(size, false);
    let fd: number;
    try {
      fd = openSync(path, 'wx', 0o644);
    } catch (e) {
      if (errorCodeOf(e) !== 'ENOENT') throw e;
      mkdirSync(dir, { recursive: true });
      fd = openSync(path, 'wx', 0o644);
    }
    closeSync(fd);
    return new MemoryTempFile(size, true);
  }

  readonly writev: FileHandle['writev'] = (buffers, position) => {
    const moves = position === null || position === undefined;
    let at = moves ? this.#pos : position;
    let n = 0;
    for (const b of buffers) {
      const u = b instanceof Uint8Array ? b : new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
      if (at + u.length > this.data.length)
        throw new Error(`more than the ${this.data.length} bytes declared`);
      this.data.set(u, at);
      at += u.length;
      n += u.length;
    }
    if (moves) this.#pos = at;
    return Promise.resolve({ bytesWritten: n, buffers });
  };

  sync(): Promise<void> {
    return Promise.resolve();
  }

  datasync(): Promise<void> {
    return Promise.resolve();
  }

  async close(): Promise<void> {}
}

/** Upload (70) and upload-ext (80). */
export async function handleUpload(env: StorageEnv, ctx: RequestContext, ext: boolean): Promise<void> {
  const head = ext
    ? decodeUploadExtPrefix(ctx.body, ctx.header.bodyLength)
    : { ...decodeUploadPrefix(ctx.body, ctx.header.bodyLength), contentType: '' };
  checkFileId(head.fileId);
  checkAppId(head.appId);
  checkUserId(ownerOf(head.appId, head.userId, readUserIdBytes(ctx.body)));
  checkContentType(head.contentType);
  const fileId = head.fileId;
  const table = fileTableFor(readUserIdBytes(ctx.body));
  // The file id is claimed for the whole upload, before anything is checked or read. In a
  // shared store folder the claim is a name there: a client that gave up on a slow member and
  // retries on another gets BUSY instead of a second copy, so a late commit on the first member
  // cannot bring back a file deleted in between (chaos run). The claim is the upload's temp file
  // hard-linked to the claim path on a local file system (LinkClaim), a lock file elsewhere
  // (GlusterFS: Stores.local) or where no hard link can be made; it is
  // refreshed while the upload runs and expires UPLOAD_CLAIM_TTL_MS after its holder died; a
  // holder that stalled that long checks it still has it before committing. A store no other
  // storage writes to keeps the claim in memory.
  const claimFor = async (tempFile: string): Promise<UploadClaim> => {
    if (!env.config.storesShared) return env.claims.acquire(fileId);
    const path = env.stores.claimPath(fileId);
    try {
      const linked = env.stores.local
        ? await LinkClaim.acquire(path, tempFile, fileId, UPLOAD_CLAIM_TTL_MS)
        : null;
      return linked ?? (await FileLock.acquire(path, env.owner, fileId, UPLOAD_CLAIM_TTL_MS));
    } catch (e) {
      // BUSY passes; a store that cannot take the claim fails as the upload would
      throw e instanceof DsmError ? e : ioFailure(`Receive and Save File Fail, Fileid: ${fileId}`, e);
    }
  };
  await ctx.reply(await receiveUpload(env, ctx, ext, head, table, claimFor));
}

/**
 * Receives an upload into its temp file (named after its id, see commit-journal.ts), fsyncs
 * it, links it to its final path and hands it to the group committer, which answers once the
 * folder entries and the row are durable. The file id's claim (`claimFor`, taken once the temp
 * file exists) is held from before the existence check to the end, and released before the
 * reply: the client's next request may be about this file id.
 */
async function receiveUpload(
  env: StorageEnv,
  ctx: RequestContext,
  ext: boolean,
  head: { fileId: string; appId: string; userId: string; size: number; contentType: string },
  table: FileTableName,
  claimFor: (tempFile: string) => Promise<UploadClaim>,
): Promise<Uint8Array | undefined> {
  const fileId = head.fileId;
  const storeIndex = env.stores.pick();
  await checkSpace(env, storeIndex, head.size);
  let id = await env.nextId(storeIndex);
  const seconds = Math.floor(Date.now() / 1000);

  const saveFail = (e: unknown) => ioFailure(`Receive and Save File Fail, Fileid: ${fileId}`, e);
  // a local store: a small body is received in memory and written, fsynced and linked by the
  // small-file writer's thread; a later link (a retry) is a synchronous call (microseconds
  // there, each a thread pool round trip of 40-60 µs of CPU otherwise)
  const local = env.stores.local;
  const small = local && head.size <= SMALL_UPLOAD_BYTES;
  const tmpDir = env.stores.tmpDir(storeIndex);
  let tmp = join(tmpDir, journalName(id, seconds, fileId));
  let fh: TempFile;
  try {
    // a link claim (a shared store) hard-links the temp file: it must exist before the claim
    fh = small
      ? MemoryTempFile.open(head.size, tmp, tmpDir, env.config.storesShared)
      : await open(tmp, 'wx', 0o644).catch(async (e) => {
          if (errorCodeOf(e) !== 'ENOENT') throw e;
          await mkdir(tmpDir, { recursive: true }); // the temp folder was removed under us
          return open(tmp, 'wx', 0o644);
        });
  } catch (e) {
    throw saveFail(e);
  }
  let claim: UploadClaim;
  try {
    claim = await claimFor(tmp);
  } catch (e) {
    await fh.close().catch(() => {});
    await removeQuiet(tmp).catch(() => {});
    throw e;
  }
  try {
    return await receiveClaimed();
  } finally {
    await claim.release().catch((e) => env.log.warn({ err: e, fileId }, 'cannot release the upload claim'));
  }

  async function receiveClaimed(): Promise<Uint8Array | undefined> {
    try {
      await refuseExisting(env, table, fileId, { orUpload: true });
    } catch (e) {
      await fh.close().catch(() => {});
      await removeQuiet(tmp).catch(() => {});
      throw e;
    }
    let got: Received & { sha256: Buffer };
    try {
      got = await receiveInto(fh, ctx.stream, env.config.ioChunkBytes, null, { syncEvery: EARLY_SYNC_BYTES });
      if (got.bytes !== head.size) throw new Error(`received ${got.bytes} of ${head.size} bytes`);
      if (!(fh instanceof MemoryTempFile)) {
        await fh.sync();
        await fh.close();
      }
    } catch (e) {
      await fh.close().catch(() => {});
      await removeQuiet(tmp).catch(() => {});
      throw isSystemError(e) ? saveFail(e) : e;
    }
    // Link to the final path, keeping the temp name as the journal until the row is committed.
    let finalPath = '';
    let journal: string | null = tmp;
    // a small upload: its temp file is written, fsynced and linked in one job of the writer
    // (its first link's failure, if any, is handled below as a link's)
    let firstLink: { error: NodeJS.ErrnoException | null } | null = null;
    if (fh instanceof MemoryTempFile) {
      finalPath = pathForId(env.stores.path(storeIndex), id, seconds);
      try {
        await env.dirs.ensure(dirname(finalPath));
      } catch (e) {
        await fh.close().catch(() => {});
        await removeQuiet(tmp).catch(() => {});
        throw saveFail(e);
      }
      // a failed job removed the temp file
      const r = await env.smallFiles
        .write({ tmp, tmpDir, exists: fh.exists, data: fh.data, finalPath })
        .catch((e: unknown) => {
          throw saveFail(e);
        });
      firstLink = { error: r.linkError ?? null };
    }
    try {
      for (let attempt = 0; ; attempt++) {
        finalPath = pathForId(env.stores.path(storeIndex), id, seconds);
        const first = firstLink;
        firstLink = null;
        if (!first) await env.dirs.ensure(dirname(finalPath));
        try {
          if (first) {
            if (first.error) throw first.error;
            break;
          }
          if (local) linkSync(tmp, finalPath);
          else await link(tmp, finalPath);
          break;
        } catch (e) {
          const c = errorCodeOf(e);
          if (c === 'ENOENT' && attempt < 3) {
            env.dirs.forget(dirname(finalPath)); // removed behind our back: create it again
            continue;
          }
          if (c === 'EEXIST' && attempt < 3) {
            env.log.warn({ path: finalPath }, 'file path already taken; asking for another id');
            id = await env.nextId(storeIndex);
            const renamed = join(tmpDir, journalName(id, seconds, fileId));
            await rename(tmp, renamed);
            tmp = renamed;
            continue;
          }
          if (c !== 'EPERM' && c !== 'ENOTSUP' && c !== 'EOPNOTSUPP' && c !== 'ENOSYS' && c !== 'EXDEV')
            throw e;
          // no hard links on this store: the file is moved, and not journalled
          finalPath = await placeFinal(env, storeIndex, tmp, fileId, id);
          journal = null;
          break;
        }
      }
    } catch (e) {
      await removeQuiet(tmp).catch(() => {});
      throw e instanceof DsmError ? e : saveFail(e);
    }
    const meta: FileMeta = {
      table,
      fileId,
      appId: head.appId,
      userId: head.userId,
      path: finalPath,
      size: got.bytes,
      contentType: head.contentType || sniffContentType(got.head),
      sha256: got.sha256.toString('hex'),
      mtimeMs: Date.now(),
    };
    await env.commits.commit({ meta, finalPath, journal, stillClaimed: () => claim.held() });
    // ctx.log makes the request's child logger: only when the line is written
    if (env.log.isLevelEnabled('debug'))
      ctx.log.debug({ fileId, path: finalPath, size: got.bytes }, 'stored');
    return ext ? encodeStatReply(statOf(meta)) : undefined;
  }
}

/*
 * Lookups name the requester: another tenant's file is "not found" after the same work as a
 * missing one (see MetaStore). Every error below that could tell the two apart (range, I/O,
 * path) comes only after the row was found as the requester's.
 */
async function lookup(env: StorageEnv, table: FileTableName, fileId: string, owner: Owner): Promise<Found> {
  let f: Found | null;
  try {
    f = await env.meta.find(table, fileId, owner);
  } catch (e) {
    throw dbFailure(e, `Read Database Fail, Fileid: ${fileId}`);
  }
  if (!f) throw notFound(fileId);
  return f;
}

async function lookupDb(env: StorageEnv, table: FileTableName, fileId: string, owner: Owner): Promise<Found> {
  let m: FileMeta | null;
  try {
    m = await env.meta.findInDb(table, fileId, owner);
  } catch (e) {
    throw dbFailure(e, `Read Database Fail, Fileid: ${fileId}`);
  }
  if (!m) throw notFound(fileId);
  return { meta: m, cached: false };
}

const badPath = (fileId: string) =>
  new DsmError(ErrorCode.IO, `Invalid File Path, Fileid: ${fileId}`, Errno.INTERNAL);

/**
 * Opens a recorded file, refusing any path outside the store folders. Raw fs errors pass.
 * The check is made on the file actually opened (its /proc/self/fd link: one syscall instead of
 * a realpath walk, and no window between check and open); where /proc is missing, realpath.
 */
async function openRecorded(env: StorageEnv, m: FileMeta): Promise<FileHandle> {
  const abs = recordedPath(env, m);
  const fh = await open(abs, 'r');
  try {
    await checkOpened(env, m, abs, fh);
  } catch (e) {
    await fh.close().catch(() => {});
    throw e;
  }
  return fh;
}

/** A recorded path, absolute and inside the stores (else the INTERNAL "Invalid File Path" error). */
function recordedPath(env: StorageEnv, m: FileMeta): string {
  const abs = env.stores.resolveRecorded(m.path);
  if (!abs) {
    env.log.error({ fileId: m.fileId, path: m.path }, 'recorded path is outside the store folders');
    throw badPath(m.fileId);
  }
  return abs;
}

/** The file actually opened for `abs` is inside the stores (no symlink led out of them). */
async function checkOpened(env: StorageEnv, m: FileMeta, abs: string, fh: FileHandle): Promise<void> {
  const real = await readlink(`/proc/self/fd/${fh.fd}`).catch(() => realpath(abs));
  if (!env.stores.isRealInside(real)) {
    env.log.error({ fileId: m.fileId, path: m.path }, 'recorded path leads outside the store folders');
    throw badPath(m.fileId);
  }
}

/**
 * A lookup that does not trust a cache hit blindly: a file deleted through another member is
 * noticed (its file is gone) and the database is asked instead.
 */
async function lookupFresh(
  env: StorageEnv,
  table: FileTableName,
  fileId: string,
  owner: Owner,
): Promise<Found> {
  const f = await lookup(env, table, fileId, owner);
  if (!f.cached) return f;
  const abs = env.stores.resolveRecorded(f.meta.path);
  const gone = abs
    ? await stat(abs).then(
        () => false,
        (e) => errorCodeOf(e) === 'ENOENT',
      )
    : false;
  if (!gone) return f;
  await env.meta.evict(fileId, owner);
  return lookupDb(env, table, fileId, owner);
}

/** The ids of a request, its table (by the user id's raw bytes) and the owner it claims. */
function idsOf(ctx: RequestContext) {
  const ids = decodeIdsRequest(ctx.body);
  checkFileId(ids.fileId);
  const userBytes = readUserIdBytes(ctx.body);
  return { ...ids, table: fileTableFor(userBytes), owner: ownerOf(ids.appId, ids.userId, userBytes) };
}

/** File size (71), from metadata. */
export async function handleSize(env: StorageEnv, ctx: RequestContext): Promise<void> {
  const { fileId, table, owner } = idsOf(ctx);
  const f = await lookupFresh(env, table, fileId, owner);
  await ctx.reply(encodeI64Body(f.meta.size));
}

/**
 * Replies up to this many bytes from a local store are read synchronously and sent as one frame,
 * as nginx reads without aio: a read from the page cache takes microseconds, less than a thread
 * pool round trip (two thirds of a small download's time went to those), and one from the disk
 * holds the other connections for about one disk access. Network stores (GlusterFS), where a
 * read can wait for a slow peer, read through the thread pool as before.
 */
const SYNC_READ_BYTES = 64 * 1024;

/**
 * `length` bytes of an open file from `position`, read synchronously (SYNC_READ_BYTES) into a
 * reply frame: HEADER_LENGTH bytes of room, then the bytes (RequestContext.replyFramed).
 */
function readFrameSync(
  of: OpenFile,
  position: number,
  length: number,
  fileId: string,
): Uint8Array<ArrayBuffer> {
  const buf = Buffer.allocUnsafe(HEADER_LENGTH + length);
  let at = 0;
  try {
    while (at < length) {
      const n = readSync(of.fh.fd, buf, HEADER_LENGTH + at, length - at, position + at);
      if (n === 0) throw new Error(`file ended ${length - at} bytes early`);
      at += n;
    }
  } catch (e) {
    throw ioFailure(`Read File Fail, Fileid: ${fileId}`, e);
  }
  return buf;
}

const rangeError = (message: string) => new DsmError(ErrorCode.RANGE, message, Errno.RANGE);

/** Download (72): the seed's range rules; the file is opened before the header goes out. */
export async function handleDownload(env: StorageEnv, ctx: RequestContext): Promise<void> {
  const req = decodeDownloadRequest(ctx.body);
  checkFileId(req.fileId);
  const fileId = req.fileId;
  const userBytes = readUserIdBytes(ctx.body);
  const table = fileTableFor(userBytes);
  const owner = ownerOf(req.appId, req.userId, userBytes);
  // a lookup kept in the process needs no await (MetaStore.findHot)
  const hot = env.meta.findHot(table, fileId, owner);
  let f = hot ? { meta: hot, cached: true } : await lookup(env, table, fileId, owner);
  for (;;) {
    const total = f.meta.size;
    if (req.offset < 0 || req.offset > total) {
      throw rangeError(`Invalid Offset, ${req.offset} is NOT Between 0 AND ${total}`);
    }
    const size = req.size === 0 ? total - req.offset : req.size;
    const left = total - req.offset;
    if (size < 0 || size > left) throw rangeError(`Invalid Offset, ${size} is NOT Between 0 AND ${left}`);
    // a kept handle when this file was read lately (open-files.ts: two calls instead of five)
    let of: OpenFile;
    const meta = f.meta;
    try {
      const abs = recordedPath(env, meta);
      of = await env.openFiles.open(abs, (fh) => checkOpened(env, meta, abs, fh));
    } catch (e) {
      if (e instanceof DsmError) throw e;
      if (errorCodeOf(e) === 'ENOENT' && f.cached) {
        // Deleted through another member while cached here: ask the database.
        await env.meta.evict(fileId, owner);
        f = await lookupDb(env, table, fileId, owner);
        continue;
      }
      throw ioFailure(`Open File Fail, Fileid: ${fileId}`, e);
    }
    try {
      if (of.size < req.offset + size) {
        throw ioFailure(`File Size Mismatch, Fileid: ${fileId}: ${of.size} < ${req.offset + size}`);
      }
      if (size <= SYNC_READ_BYTES && env.stores.local)
        await ctx.replyFramed(readFrameSync(of, req.offset, size, fileId));
      else await ctx.replyStream(size, readChunks(of.fh, req.offset, size, env.config.ioChunkBytes));
    } finally {
      of.release();
    }
    return;
  }
}

/**
 * Delete (73): delete log entry, file, row, cache entry. The file goes before the row: a storage killed in the
 * middle leaves a row without a file (a read answers an error, a retried delete finishes the
 * job), never a file without a row, which another member's cached metadata would still serve
 * and a retried delete could no longer find (chaos run, 2026-12-02).
 */
export async function handleDelete(env: StorageEnv, ctx: RequestContext): Promise<void> {
  const { fileId, table, owner } = idsOf(ctx);
  const f = await lookupDb(env, table, fileId, owner);
  // logged first, so that no file can go without the gateways hearing of it (a delete that
  // fails after this only makes them drop a file they may read again)
  try {
    await env.meta.logDelete(fileId, owner);
  } catch (e) {
    throw dbFailure(e, `Delete Database Fail, Fileid: ${fileId}`);
  }
  const abs = env.stores.resolveRecorded(f.meta.path);
  if (!abs) {
    env.log.error(
      { fileId, path: f.meta.path },
      'recorded path is outside the store folders; file not deleted',
    );
  } else {
    env.openFiles.forget(abs);
    try {
      await removeQuiet(abs);
    } catch (e) {
      throw ioFailure(`Delete File Fail, Fileid: ${fileId}`, e);
    }
  }
  let removed: boolean;
  try {
    removed = await env.meta.remove(table, fileId, owner);
  } catch (e) {
    throw dbFailure(e, `Delete Database Fail, Fileid: ${fileId}`);
  }
  await env.meta.evict(fileId, owner);
  if (!removed) throw notFound(fileId);
  await ctx.reply();
}

/**
 * Deletes since (81): the group's delete log after the asker's sequence number (messages/storage.ts),
 * for the gateways' caches. A database failure is the asker's to handle (it serves nothing cached).
 */
export async function handleDeletes(env: StorageEnv, ctx: RequestContext): Promise<void> {
  const since = decodeDeletesRequest(ctx.body);
  let r: DeletesReply;
  try {
    r = await env.meta.deletesSince(since, DELETES_MAX);
  } catch (e) {
    throw dbFailure(e, 'Read Database Fail, delete log');
  }
  await ctx.reply(encodeDeletesReply(r));
}

/**
 * Stat (74): size, mtime, sha-256, content type. Rows without a checksum (written by the seed)
 * get one computed and stored; a missing content type is sniffed from the first bytes.
 */
export async function handleStat(env: StorageEnv, ctx: RequestContext): Promise<void> {
  const { fileId, table, owner } = idsOf(ctx);
  const f = await lookupFresh(env, table, fileId, owner);
  let m = f.meta;
  const needHash = !m.sha256 || !SHA256_HEX.test(m.sha256);
  if (needHash || !m.contentType || m.mtimeMs === null) {
    let fh: FileHandle;
    try {
      fh = await openRecorded(env, m);
    } catch (e) {
      if (e instanceof DsmError) throw e;
      throw ioFailure(`Open File Fail, Fileid: ${fileId}`, e);
    }
    const patch: { sha256?: string; contentType?: string; mtimeMs?: number } = {};
    try {
      const st = await fh.stat();
      let head: Uint8Array | undefined;
      if (needHash) {
        const h = await hashOpenFile(fh, st.size, env.config.ioChunkBytes);
        patch.sha256 = h.sha256.toString('hex');
        head = h.head;
      }
      if (!m.contentType) {
        if (!head) {
          const buf = Buffer.alloc(Math.min(SNIFF_BYTES, st.size));
          const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
          head = buf.subarray(0, bytesRead);
        }
        patch.contentType = sniffContentType(head);
      }
      if (m.mtimeMs === null) patch.mtimeMs = Math.floor(st.mtimeMs);
    } catch (e) {
      throw ioFailure(`Read File Fail, Fileid: ${fileId}`, e);
    } finally {
      await fh.close().catch(() => {});
    }
    m = { ...m, ...patch };
    try {
      await env.meta.complete(m, patch);
    } catch (e) {
      // The reply is still right; the next stat computes it again.
      env.log.warn({ err: e, fileId }, 'cannot record the computed checksum');
    }
  }
  await ctx.reply(encodeStatReply(statOf(m)));
}
