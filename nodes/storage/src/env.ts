import { isValidFileId } from '@dsm/client';
import { DsmError, ErrorCode, type Logger } from '@dsm/common';
import type { Schema } from '@dsm/db';
import { Errno } from '@dsm/packets';
import type { Kysely } from 'kysely';
import type { StorageConfig } from './config.ts';
import type { KnownDirs } from './fs-util.ts';
import type { GroupCommitter } from './group-commit.ts';
import type { LocalClaims } from './lock.ts';
import type { MetaStore } from './meta.ts';
import type { OpenFiles } from './open-files.ts';
import type { SmallFileWriter } from './small-writer.ts';
import type { Stores } from './store.ts';

/** What the request handlers share. */
export interface StorageEnv {
  config: StorageConfig;
  stores: Stores;
  meta: MetaStore;
  db: Kysely<Schema>;
  log: Logger;
  /** `<hostname>-<advertised port>`: names this process in temp folders and lock files. */
  owner: string;
  /** Next id for a store folder (errno ID_UNAVAILABLE "Get Filepath Fail..." on failure). */
  nextId(storeIndex: number): Promise<number>;
  /** Resolves once start-up (temp folder cleanup) is done; handlers wait for it. */
  started: Promise<void>;
  /** Shared durable steps of finished uploads (folder fsyncs, one transaction per batch). */
  commits: GroupCommitter;
  /** Upload claims kept in memory (used when `config.storesShared` is false). */
  claims: LocalClaims;
  /** Final folders known to exist. */
  dirs: KnownDirs;
  /** Files kept open for the next read of the same file (downloads). */
  openFiles: OpenFiles;
  /** Small uploads' file steps, on a worker thread (local stores). */
  smallFiles: SmallFileWriter;
}

export function checkFileId(fileId: string): void {
  if (!isValidFileId(fileId)) {
    throw new DsmError(ErrorCode.BAD_INPUT, `Invalid Fileid: ${fileId}`, Errno.BAD_FIELD);
  }
}

export function checkAppId(appId: string): void {
  if (!/^[A-Za-z0-9]+$/.test(appId)) {
    throw new DsmError(ErrorCode.BAD_INPUT, `Invalid APPID: ${appId}`, Errno.BAD_FIELD);
  }
}

/**
 * Refuses a new file whose user id is not valid UTF-8: it is recorded as decoded text, which
 * could equal another user's id, and a request with such an id never owns a file (see Owner).
 */
export function checkUserId(owner: { exact: boolean }): void {
  if (!owner.exact) {
    throw new DsmError(ErrorCode.BAD_INPUT, 'Invalid USERID: not UTF-8', Errno.BAD_FIELD);
  }
}

/**
 * A missing file, and equally a file of another app or user: the two replies are the same bytes
 * (errno and text), so a request cannot learn that someone else's file exists.
 */
export const notFound = (fileId: string) =>
  new DsmError(ErrorCode.NOT_FOUND, `Read Database Fail, Fileid: ${fileId}`, Errno.NOT_FOUND);

/** Why a store operation failed, for the error reply: the system error's code, never its path. */
const STORE_ERRORS: Readonly<Record<string, string>> = {
  EROFS: 'store is read-only',
  ENOTCONN: 'store not connected',
  EIO: 'store I/O error',
  ENOSPC: 'no space left on the store',
  EDQUOT: 'store quota exceeded',
  ESTALE: 'stale store handle',
  EACCES: 'permission denied on the store',
};

function causeNote(cause: unknown): string {
  if (typeof cause !== 'object' || cause === null || !('syscall' in cause)) return '';
  const code = (cause as { code?: unknown }).code;
  if (typeof code !== 'string' || !/^E[A-Z0-9]+$/.test(code)) return '';
  const why = STORE_ERRORS[code];
  return why ? ` (${code}: ${why})` : ` (${code})`;
}

/**
 * An I/O failure (errno IO_ERROR). The seed's text comes first; when the cause is a system
 * error its code follows, e.g. "Receive and Save File Fail, Fileid: X (EROFS: store is
 * read-only)" from a GlusterFS member that lost its quorum, so the client sees why.
 */
export const ioFailure = (message: string, cause?: unknown) =>
  new DsmError(ErrorCode.IO, `${message}${causeNote(cause)}`, Errno.IO_ERROR, { cause });

export const exists = (fileId: string) =>
  new DsmError(ErrorCode.EXISTS, `INSERT Database Fail, Fileid: ${fileId}`, Errno.EXISTS);
