import { type FileHandle, mkdir, open, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { DsmError, ErrorCode, errorCodeOf } from '@dsm/common';
import { isUniqueViolation, type UploadTable } from '@dsm/db';
import {
  decodeIdsRequest,
  decodeUploadAppendPrefix,
  decodeUploadCreate,
  Errno,
  encodeI64Body,
  encodeStatReply,
  encodeUploadOffsetReply,
  type FileIds,
  readUserIdBytes,
} from '@dsm/packets';
import type { RequestContext } from '@dsm/server';
import type { Selectable } from 'kysely';
import { checkAppId, checkFileId, checkUserId, ioFailure, type StorageEnv } from './env.ts';
import {
  checkContentType,
  checkSpace,
  isSystemError,
  placeFinal,
  recordFile,
  refuseExisting,
  statOf,
} from './file-ops.ts';
import {
  EARLY_SYNC_BYTES,
  fsyncDir,
  hashOpenFile,
  moveNoReplace,
  receiveInto,
  removeQuiet,
} from './fs-util.ts';
import { FileLock, isLockHeld } from './lock.ts';
import { dbFailure, type FileMeta, ownerOf } from './meta.ts';
import { fileTableFor } from './seed-rules.ts';
import { sniffContentType } from './sniff.ts';

type UploadRow = Selectable<UploadTable>;

interface OpenUpload {
  row: UploadRow;
  partial: string;
  storeIndex: number;
}

const uploadNotFound = (fileId: string) =>
  new DsmError(ErrorCode.NOT_FOUND, `Upload Not Found, Fileid: ${fileId}`, Errno.NOT_FOUND);

const lockPath = (partial: string) => `${partial}.lock`;

/**
 * The upload named by the request's ids, checked against its row (owner, group, path). An
 * upload of another app or user, or of another group, is "Upload Not Found" exactly like a
 * missing one (same errno and text, after the same single SELECT). Rows are written by create
 * with the requester's app and user (NOT NULL columns), and the user id must be valid UTF-8 to
 * match (see Owner).
 */
async function findUpload(env: StorageEnv, ids: FileIds, userIdBytes: Uint8Array): Promise<OpenUpload> {
  let row: UploadRow | undefined;
  try {
    row = await env.db.selectFrom('t_upload').selectAll().where('id', '=', ids.fileId).executeTakeFirst();
  } catch (e) {
    throw dbFailure(e, `Read Database Fail, Fileid: ${ids.fileId}`);
  }
  const owner = ownerOf(ids.appId, ids.userId, userIdBytes);
  if (!row || row.group_name !== env.config.group || !owner.exact) throw uploadNotFound(ids.fileId);
  if (row.appid !== owner.appId || row.userid !== owner.userId) throw uploadNotFound(ids.fileId);
  const partial = env.stores.resolveRecorded(row.temp_path);
  const storeIndex = partial ? env.stores.indexOf(partial) : -1;
  if (!partial || partial !== env.stores.partialPath(storeIndex, ids.fileId)) {
    env.log.error(
      { fileId: ids.fileId, path: row.temp_path },
      'upload path is not a partial file of a store',
    );
    throw new DsmError(ErrorCode.IO, `Invalid Upload Path, Fileid: ${ids.fileId}`, Errno.INTERNAL);
  }
  return { row, partial, storeIndex };
}

async function openPartial(up: OpenUpload, flags: string): Promise<FileHandle> {
  try {
    return await open(up.partial, flags);
  } catch (e) {
    throw ioFailure(`Upload Data Missing, Fileid: ${up.row.id}`, e);
  }
}

async function touch(env: StorageEnv, fileId: string): Promise<void> {
  await env.db.updateTable('t_upload').set({ updated_ms: Date.now() }).where('id', '=', fileId).execute();
}

/** Create (75): a row in t_upload and an empty partial file `<store>/.partial/<fileid>`. */
export async function handleUploadCreate(env: StorageEnv, ctx: RequestContext): Promise<void> {
  const req = decodeUploadCreate(ctx.body);
  checkFileId(req.fileId);
  checkAppId(req.appId);
  checkUserId(ownerOf(req.appId, req.userId, readUserIdBytes(ctx.body)));
  checkContentType(req.contentType);
  const fileId = req.fileId;
  if (req.totalSize > env.config.maxUploadBytes) {
    throw new DsmError(
      ErrorCode.TOO_LARGE,
      `File Too Large: ${req.totalSize} > ${env.config.maxUploadBytes}`,
      Errno.TOO_LARGE,
    );
  }
  const table = fileTableFor(readUserIdBytes(ctx.body));
  await refuseExisting(env, table, fileId, { orUpload: false });
  const storeIndex = env.stores.pick();
  if (req.totalSize > 0) await checkSpace(env, storeIndex, req.totalSize);
  const partial = env.stores.partialPath(storeIndex, fileId);
  const now = Date.now();
  try {
    await env.db
      .insertInto('t_upload')
      .values({
        id: fileId,
        appid: req.appId,
        userid: req.userId,
        group_name: env.config.group,
        temp_path: partial,
        total_size: req.totalSize,
        content_type: req.contentType,
        created_ms: now,
        updated_ms: now,
      })
      .execute();
  } catch (e) {
    if (isUniqueViolation(e)) {
      throw new DsmError(ErrorCode.EXISTS, `Upload Exists, Fileid: ${fileId}`, Errno.EXISTS);
    }
    throw dbFailure(e, `INSERT Database Fail, Fileid: ${fileId}`);
  }
  try {
    // The id is ours now (primary key): a lock or partial file left by an expired upload goes.
    await mkdir(dirname(partial), { recursive: true });
    await removeQuiet(lockPath(partial));
    const fh = await open(partial, 'w', 0o644);
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fsyncDir(dirname(partial));
  } catch (e) {
    await env.db
      .deleteFrom('t_upload')
      .where('id', '=', fileId)
      .execute()
      .catch(() => {});
    throw ioFailure(`Receive and Save File Fail, Fileid: ${fileId}`, e);
  }
  await ctx.reply(encodeI64Body(0));
}

/**
 * Append (76): under the upload's lock file (one append at a time across every storage of the
 * group), the offset must equal the partial file's size; the bytes are written as they arrive
 * and fsynced. A body cut midway keeps what arrived (the client asks for the offset and goes on).
 */
export async function handleUploadAppend(env: StorageEnv, ctx: RequestContext): Promise<void> {
  const head = decodeUploadAppendPrefix(ctx.body, ctx.header.bodyLength);
  checkFileId(head.fileId);
  const fileId = head.fileId;
  const up = await findUpload(env, head, readUserIdBytes(ctx.body));
  const lock = await FileLock.acquire(lockPath(up.partial), env.owner, fileId);
  let newOffset: number;
  try {
    const fh = await openPartial(up, 'r+');
    try {
      const current = (await fh.stat()).size;
      if (head.offset !== current) {
        throw new DsmError(
          ErrorCode.OFFSET_MISMATCH,
          `Upload Offset Mismatch: ${head.offset} != ${current}`,
          Errno.OFFSET_MISMATCH,
        );
      }
      const end = head.offset + head.length;
      const limit = up.row.total_size >= 0 ? up.row.total_size : env.config.maxUploadBytes;
      if (end > limit) {
        throw new DsmError(ErrorCode.TOO_LARGE, `Upload Too Large: ${end} > ${limit}`, Errno.TOO_LARGE);
      }
      if (up.row.total_size < 0) await checkSpace(env, up.storeIndex, head.length);
      let failure: unknown;
      try {
        await receiveInto(fh, ctx.stream, env.config.ioChunkBytes, head.offset, {
          syncEvery: EARLY_SYNC_BYTES,
          hash: false, // the whole file's checksum is computed when it is first asked for
        });
      } catch (e) {
        failure = e;
      }
      await fh.sync().catch((e) => {
        failure ??= e;
      });
      newOffset = (await fh.stat()).size;
      await touch(env, fileId).catch((e) =>
        env.log.warn({ err: e, fileId }, 'cannot update the upload time'),
      );
      if (failure !== undefined) {
        ctx.log.info({ fileId, offset: newOffset }, 'append cut short; bytes so far kept');
        throw isSystemError(failure)
          ? ioFailure(`Receive and Save File Fail, Fileid: ${fileId}`, failure)
          : failure;
      }
    } finally {
      await fh.close().catch(() => {});
    }
  } finally {
    // Released before the reply, so the client's next append never finds it held.
    await lock.release().catch((e) => env.log.warn({ err: e, fileId }, 'cannot release the upload lock'));
  }
  await ctx.reply(encodeI64Body(newOffset));
}

/** Offset (77): current size of the partial file and the announced total. */
export async function handleUploadOffset(env: StorageEnv, ctx: RequestContext): Promise<void> {
  const ids = decodeIdsRequest(ctx.body);
  checkFileId(ids.fileId);
  const up = await findUpload(env, ids, readUserIdBytes(ctx.body));
  let size: number;
  try {
    size = (await stat(up.partial)).size;
  } catch (e) {
    throw ioFailure(`Upload Data Missing, Fileid: ${ids.fileId}`, e);
  }
  await ctx.reply(encodeUploadOffsetReply({ offset: size, totalSize: up.row.total_size }));
}

/**
 * Commit (78): the size must equal the announced total (when known); checksum, id, move into
 * the final path, metadata row, upload row removed. Replies the stat.
 */
export async function handleUploadCommit(env: StorageEnv, ctx: RequestContext): Promise<void> {
  const ids = decodeIdsRequest(ctx.body);
  checkFileId(ids.fileId);
  const fileId = ids.fileId;
  const table = fileTableFor(readUserIdBytes(ctx.body));
  const up = await findUpload(env, ids, readUserIdBytes(ctx.body));
  const lock = await FileLock.acquire(lockPath(up.partial), env.owner, fileId);
  let meta: FileMeta;
  try {
    const fh = await openPartial(up, 'r+');
    let size: number;
    let sha256: Buffer;
    let head: Uint8Array;
    try {
      size = (await fh.stat()).size;
      if (up.row.total_size >= 0 && size !== up.row.total_size) {
        throw new DsmError(
          ErrorCode.OFFSET_MISMATCH,
          `Upload Offset Mismatch: ${size} != ${up.row.total_size}`,
          Errno.OFFSET_MISMATCH,
        );
      }
      // orUpload false: the t_upload row is this upload's own
      await refuseExisting(env, table, fileId, { orUpload: false });
      try {
        ({ sha256, head } = await hashOpenFile(fh, size, env.config.ioChunkBytes));
        await fh.sync();
      } catch (e) {
        throw ioFailure(`Read File Fail, Fileid: ${fileId}`, e);
      }
    } finally {
      await fh.close().catch(() => {});
    }
    const id = await env.nextId(up.storeIndex);
    const finalPath = await placeFinal(env, up.storeIndex, up.partial, fileId, id);
    meta = {
      table,
      fileId,
      appId: up.row.appid,
      userId: up.row.userid,
      path: finalPath,
      size,
      contentType: up.row.content_type || sniffContentType(head),
      sha256: sha256.toString('hex'),
      mtimeMs: Date.now(),
    };
    // If the row cannot be written, the data goes back to the partial file (commit can be retried).
    await recordFile(env, meta, () => moveNoReplace(finalPath, up.partial));
    try {
      await env.db.deleteFrom('t_upload').where('id', '=', fileId).execute();
    } catch (e) {
      // The file is committed; the sweeper removes the stale upload row later.
      env.log.warn({ err: e, fileId }, 'cannot delete the upload row');
    }
  } finally {
    await lock.release().catch((e) => env.log.warn({ err: e, fileId }, 'cannot release the upload lock'));
  }
  await ctx.reply(encodeStatReply(statOf(meta)));
}

/** Abort (79): upload row and partial file removed. */
export async function handleUploadAbort(env: StorageEnv, ctx: RequestContext): Promise<void> {
  const ids = decodeIdsRequest(ctx.body);
  checkFileId(ids.fileId);
  const up = await findUpload(env, ids, readUserIdBytes(ctx.body));
  const lock = await FileLock.acquire(lockPath(up.partial), env.owner, ids.fileId);
  try {
    try {
      // the owner columns too: the row was found as the requester's, and stays out of reach if
      // it changed hands in between
      await env.db
        .deleteFrom('t_upload')
        .where('id', '=', ids.fileId)
        .where('appid', '=', ids.appId)
        .where('userid', '=', ids.userId)
        .execute();
    } catch (e) {
      throw dbFailure(e, `Delete Database Fail, Fileid: ${ids.fileId}`);
    }
    await removeQuiet(up.partial).catch((e) => env.log.warn({ err: e }, 'cannot delete a partial file'));
  } finally {
    await lock.release().catch(() => {});
  }
  await ctx.reply();
}

/**
 * Deletes this group's resumable uploads untouched for `uploadExpiryMs` (row, partial file,
 * lock). Uploads with a live lock (an append in progress) are left alone. Several members may
 * sweep at once: a row is only handled by the member whose DELETE removed it.
 */
export async function sweepUploads(env: StorageEnv, nowMs = Date.now()): Promise<number> {
  const cutoff = nowMs - env.config.uploadExpiryMs;
  const rows = await env.db
    .selectFrom('t_upload')
    .select(['id', 'temp_path', 'updated_ms'])
    .where('group_name', '=', env.config.group)
    .where('updated_ms', '<', cutoff)
    .limit(1000)
    .execute();
  let swept = 0;
  for (const r of rows) {
    const partial = env.stores.resolveRecorded(r.temp_path);
    if (partial && (await isLockHeld(lockPath(partial)))) continue;
    const del = await env.db
      .deleteFrom('t_upload')
      .where('id', '=', r.id)
      .where('updated_ms', '=', r.updated_ms)
      .executeTakeFirst();
    if (Number(del.numDeletedRows) === 0) continue;
    if (partial) {
      await removeQuiet(partial).catch((e) => {
        if (errorCodeOf(e) !== 'ENOENT')
          env.log.warn({ err: e, path: partial }, 'cannot delete an expired upload');
      });
      await removeQuiet(lockPath(partial)).catch(() => {});
    }
    swept++;
  }
  if (swept > 0) env.log.info({ swept }, 'expired uploads deleted');
  return swept;
}
