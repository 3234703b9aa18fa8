import { readFixed, readI64, readU16, writeFixed, writeI64, writeU16 } from '../bytes.ts';
import { CONTENT_TYPE_WIDTH, Errno, IDS_LENGTH, SHA256_LENGTH } from '../constants.ts';
import { ProtocolError } from '../errors.ts';
import { type FileIds, readIds, writeIds } from './ids.ts';

function expectLength(b: Uint8Array, n: number): void {
  if (b.length !== n) throw new ProtocolError(`Invalid Body Length: ${b.length} != ${n}`, Errno.BAD_LENGTH);
}

/** A streamed frame's prefix: at least `n` bytes (the caller may pass the whole body). */
function expectPrefix(b: Uint8Array, n: number): void {
  if (b.length < n) throw new ProtocolError(`Invalid Body Length: ${b.length} < ${n}`, Errno.BAD_LENGTH);
}

function expectNonNegative(v: number, what: string): void {
  if (v < 0) throw new ProtocolError(`Invalid ${what}: ${v}`, Errno.BAD_FIELD);
}

// File size (71), delete (73), stat (74), upload offset (77), upload commit (78),
// upload abort (79): body = the 400-byte id block only.
export function decodeIdsRequest(b: Uint8Array): FileIds {
  expectLength(b, IDS_LENGTH);
  return readIds(b);
}

// ---------------------------------------------------------------------------------------------
// Upload (70), body = 408 + F:
// | 0   | 400 | id block            |
// | 400 | 8   | file size F, i64 BE |
// | 408 | F   | content (streamed)  |
// ---------------------------------------------------------------------------------------------
export const UPLOAD_PREFIX = IDS_LENGTH + 8;

export interface UploadHead extends FileIds {
  size: number;
}

export function encodeUploadPrefix(u: UploadHead): Uint8Array {
  expectNonNegative(u.size, 'File Size');
  const b = new Uint8Array(UPLOAD_PREFIX);
  writeIds(b, 0, u);
  writeI64(b, IDS_LENGTH, u.size);
  return b;
}

/** `bodyLength` is the header's; the declared size must account for the rest of the body exactly. */
export function decodeUploadPrefix(b: Uint8Array, bodyLength: number): UploadHead {
  expectPrefix(b, UPLOAD_PREFIX);
  const ids = readIds(b);
  const size = readI64(b, IDS_LENGTH, 'file size');
  const rest = bodyLength - UPLOAD_PREFIX;
  if (size !== rest) throw new ProtocolError(`Invalid File Size: ${size} != ${rest}`, Errno.BAD_LENGTH);
  return { ...ids, size };
}

// ---------------------------------------------------------------------------------------------
// Upload, extension (80), body = 536 + F: id block (400), content type (128), size F (8), content.
// Reply: the stat reply below (so the uploader learns the checksum).
// ---------------------------------------------------------------------------------------------
export const UPLOAD_EXT_PREFIX = IDS_LENGTH + CONTENT_TYPE_WIDTH + 8;

export interface UploadExtHead extends UploadHead {
  contentType: string;
}

export function encodeUploadExtPrefix(u: UploadExtHead): Uint8Array {
  expectNonNegative(u.size, 'File Size');
  const b = new Uint8Array(UPLOAD_EXT_PREFIX);
  writeIds(b, 0, u);
  writeFixed(b, IDS_LENGTH, CONTENT_TYPE_WIDTH, u.contentType, 'content type');
  writeI64(b, IDS_LENGTH + CONTENT_TYPE_WIDTH, u.size);
  return b;
}

export function decodeUploadExtPrefix(b: Uint8Array, bodyLength: number): UploadExtHead {
  expectPrefix(b, UPLOAD_EXT_PREFIX);
  const ids = readIds(b);
  const contentType = readFixed(b, IDS_LENGTH, CONTENT_TYPE_WIDTH, 'content type');
  const size = readI64(b, IDS_LENGTH + CONTENT_TYPE_WIDTH, 'file size');
  const rest = bodyLength - UPLOAD_EXT_PREFIX;
  if (size !== rest) throw new ProtocolError(`Invalid File Size: ${size} != ${rest}`, Errno.BAD_LENGTH);
  return { ...ids, contentType, size };
}

// ---------------------------------------------------------------------------------------------
// Download (72), body 416: id block (400), offset i64 (8), size i64 (8; 0 = to the end).
// Reply: header with body length = effective size, then the bytes.
// ---------------------------------------------------------------------------------------------
export const DOWNLOAD_LENGTH = IDS_LENGTH + 16;

export interface DownloadRequest extends FileIds {
  offset: number;
  size: number;
}

export function encodeDownloadRequest(d: DownloadRequest): Uint8Array {
  const b = new Uint8Array(DOWNLOAD_LENGTH);
  writeIds(b, 0, d);
  writeI64(b, IDS_LENGTH, d.offset);
  writeI64(b, IDS_LENGTH + 8, d.size);
  return b;
}

export function decodeDownloadRequest(b: Uint8Array): DownloadRequest {
  expectLength(b, DOWNLOAD_LENGTH);
  // fields named, not spread: an object spread cost twice the whole decode (every download)
  const ids = readIds(b);
  return {
    appId: ids.appId,
    userId: ids.userId,
    fileId: ids.fileId,
    offset: readI64(b, IDS_LENGTH, 'offset'),
    size: readI64(b, IDS_LENGTH + 8, 'size'),
  };
}

// ---------------------------------------------------------------------------------------------
// Stat (74) reply, body 176, also the reply of upload-ext (80) and upload commit (78):
// | 0  | 8   | size, i64                          |
// | 8  | 8   | mtime, i64 Unix milliseconds       |
// | 16 | 32  | sha-256 of the content             |
// | 48 | 128 | content type, NUL-padded           |
// ---------------------------------------------------------------------------------------------
export const STAT_REPLY_LENGTH = 16 + SHA256_LENGTH + CONTENT_TYPE_WIDTH;

export interface FileStat {
  size: number;
  mtimeMs: number;
  sha256: Uint8Array;
  contentType: string;
}

export function encodeStatReply(s: FileStat): Uint8Array {
  const b = new Uint8Array(STAT_REPLY_LENGTH);
  writeI64(b, 0, s.size);
  writeI64(b, 8, s.mtimeMs);
  if (s.sha256.length !== SHA256_LENGTH) throw new ProtocolError('sha-256 must be 32 bytes', Errno.BAD_FIELD);
  b.set(s.sha256, 16);
  writeFixed(b, 48, CONTENT_TYPE_WIDTH, s.contentType, 'content type');
  return b;
}

export function decodeStatReply(b: Uint8Array): FileStat {
  expectLength(b, STAT_REPLY_LENGTH);
  return {
    size: readI64(b, 0, 'size'),
    mtimeMs: readI64(b, 8, 'mtime'),
    sha256: b.slice(16, 48),
    contentType: readFixed(b, 48, CONTENT_TYPE_WIDTH, 'content type'),
  };
}

// ---------------------------------------------------------------------------------------------
// Resumable upload (extension). The upload is named by its id block, like a plain upload.
// Create (75), body 536: id block, total size i64 (−1 = not known yet), content type (128).
//   Reply: offset i64 (0).
// Append (76), body 416 + N: id block, offset i64 (must equal the current offset),
//   length N i64, then N bytes (streamed). Reply: the new offset i64, after fsync.
// Offset (77), body 400. Reply 16: offset i64, total size i64 (−1 unknown).
// Commit (78), body 400: fsync, checksum, rename into place, record metadata. Reply: stat.
// Abort (79), body 400: drop the partial file. Reply: empty OK.
// ---------------------------------------------------------------------------------------------
export const UPLOAD_CREATE_LENGTH = IDS_LENGTH + 8 + CONTENT_TYPE_WIDTH;
export const UPLOAD_APPEND_PREFIX = IDS_LENGTH + 16;

export interface UploadCreate extends FileIds {
  totalSize: number;
  contentType: string;
}

export function encodeUploadCreate(u: UploadCreate): Uint8Array {
  if (u.totalSize < -1) throw new ProtocolError(`Invalid Total Size: ${u.totalSize}`, Errno.BAD_FIELD);
  const b = new Uint8Array(UPLOAD_CREATE_LENGTH);
  writeIds(b, 0, u);
  writeI64(b, IDS_LENGTH, u.totalSize);
  writeFixed(b, IDS_LENGTH + 8, CONTENT_TYPE_WIDTH, u.contentType, 'content type');
  return b;
}

export function decodeUploadCreate(b: Uint8Array): UploadCreate {
  expectLength(b, UPLOAD_CREATE_LENGTH);
  const totalSize = readI64(b, IDS_LENGTH, 'total size');
  if (totalSize < -1) throw new ProtocolError(`Invalid Total Size: ${totalSize}`, Errno.BAD_FIELD);
  return {
    ...readIds(b),
    totalSize,
    contentType: readFixed(b, IDS_LENGTH + 8, CONTENT_TYPE_WIDTH, 'content type'),
  };
}

export interface UploadAppendHead extends FileIds {
  offset: number;
  length: number;
}

export function encodeUploadAppendPrefix(u: UploadAppendHead): Uint8Array {
  expectNonNegative(u.offset, 'Offset');
  expectNonNegative(u.length, 'Length');
  const b = new Uint8Array(UPLOAD_APPEND_PREFIX);
  writeIds(b, 0, u);
  writeI64(b, IDS_LENGTH, u.offset);
  writeI64(b, IDS_LENGTH + 8, u.length);
  return b;
}

export function decodeUploadAppendPrefix(b: Uint8Array, bodyLength: number): UploadAppendHead {
  expectPrefix(b, UPLOAD_APPEND_PREFIX);
  const ids = readIds(b);
  const offset = readI64(b, IDS_LENGTH, 'offset');
  const length = readI64(b, IDS_LENGTH + 8, 'length');
  const rest = bodyLength - UPLOAD_APPEND_PREFIX;
  if (length !== rest) throw new ProtocolError(`Invalid Length: ${length} != ${rest}`, Errno.BAD_LENGTH);
  if (offset < 0) throw new ProtocolError(`Invalid Offset: ${offset}`, Errno.BAD_FIELD);
  return { ...ids, offset, length };
}

export interface UploadOffsetReply {
  offset: number;
  totalSize: number;
}

export function encodeUploadOffsetReply(r: UploadOffsetReply): Uint8Array {
  const b = new Uint8Array(16);
  writeI64(b, 0, r.offset);
  writeI64(b, 8, r.totalSize);
  return b;
}

export function decodeUploadOffsetReply(b: Uint8Array): UploadOffsetReply {
  expectLength(b, 16);
  return { offset: readI64(b, 0, 'offset'), totalSize: readI64(b, 8, 'total size') };
}

// ---------------------------------------------------------------------------------------------
// Deletes since (81, extension): the group's delete log, for caches of files (the gateway's).
// Request, body = 8: | 0 | 8 | since: the last sequence number the asker has seen, i64 BE |
// Reply, body = 10 + 400 × N:
// | 0  | 8       | latest: the sequence number of the group's last delete, i64 BE  |
// | 8  | 2       | N, u16 BE                                                       |
// | 10 | 400 × N | the id blocks of deletes since+1 … latest, in order             |
// N is latest − since when that is 1…DELETES_MAX and the log still holds them all, else 0: the
// asker then cannot know what was deleted (it drops everything it cached).

export const DELETES_REQUEST_LENGTH = 8;
/** Most deletes one reply names. */
export const DELETES_MAX = 256;
export const DELETES_REPLY_MAX = 10 + IDS_LENGTH * DELETES_MAX;

export interface DeletesReply {
  latest: number;
  /** Empty unless it names every delete since the request's `since`. */
  deleted: FileIds[];
}

export function encodeDeletesRequest(since: number): Uint8Array {
  expectNonNegative(since, 'since');
  const b = new Uint8Array(DELETES_REQUEST_LENGTH);
  writeI64(b, 0, since);
  return b;
}

export function decodeDeletesRequest(b: Uint8Array): number {
  expectLength(b, DELETES_REQUEST_LENGTH);
  const since = readI64(b, 0, 'since');
  expectNonNegative(since, 'since');
  return since;
}

export function encodeDeletesReply(r: DeletesReply): Uint8Array {
  if (r.deleted.length > DELETES_MAX)
    throw new ProtocolError(`Too Many Deletes: ${r.deleted.length} > ${DELETES_MAX}`, Errno.BAD_FIELD);
  const b = new Uint8Array(10 + IDS_LENGTH * r.deleted.length);
  writeI64(b, 0, r.latest);
  writeU16(b, 8, r.deleted.length);
  for (let i = 0; i < r.deleted.length; i++) writeIds(b, 10 + IDS_LENGTH * i, r.deleted[i] as FileIds);
  return b;
}

export function decodeDeletesReply(b: Uint8Array): DeletesReply {
  expectPrefix(b, 10);
  const latest = readI64(b, 0, 'latest');
  expectNonNegative(latest, 'latest');
  const n = readU16(b, 8);
  if (n > DELETES_MAX) throw new ProtocolError(`Too Many Deletes: ${n} > ${DELETES_MAX}`, Errno.BAD_FIELD);
  expectLength(b, 10 + IDS_LENGTH * n);
  const deleted: FileIds[] = [];
  for (let i = 0; i < n; i++) deleted.push(readIds(b, 10 + IDS_LENGTH * i));
  return { latest, deleted };
}
