import { lstat, readdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { errorCodeOf, type Logger } from '@dsm/common';
import type { FileTableName, Schema } from '@dsm/db';
import type { Kysely } from 'kysely';
import { fsyncDir, removeQuiet } from './fs-util.ts';
import { pathForId } from './seed-rules.ts';
import type { Stores } from './store.ts';

/*
 * The commit journal of small uploads is their temp file itself. An upload writes and fsyncs
 * `<store>/.tmp/<owner>/<id hex>-<seconds hex>.<fileid>`, then hard-links it to its final path
 * (`pathForId(store, id, seconds)`) and keeps the temp name until its row is committed (see
 * GroupCommitter). So after a kill -9 every final file whose row may be missing still has a
 * second name in the temp folder that says where it is, and the restart can tell:
 *
 * - row recorded for that path → the upload was committed: only the temp name goes;
 * - no such row → it was never acknowledged: the final file goes, then the temp name.
 *
 * A temp file that is not linked anywhere (the upload was still receiving) just goes. In a
 * shared store the temp file is also the upload's claim on its file id (lock.ts LinkClaim:
 * hard-linked at `<store 0>/.partial/<fileid>.upload.lock`); a claim name still on the temp
 * file's inode is this process's and goes with it (else a crash mid-upload would leave the
 * body's bytes held by it).
 */

const FILE_TABLES: readonly FileTableName[] = ['t_file_01', 't_file_02', 't_file_03'];
const JOURNAL_NAME = /^([0-9a-f]{1,14})-([0-9a-f]{1,12})\.(.+)$/;

/** The temp name of an upload that will become file `id` of `seconds`. */
export function journalName(id: number, seconds: number, fileId: string): string {
  return `${id.toString(16)}-${Math.floor(seconds).toString(16)}.${fileId}`;
}

export function parseJournalName(name: string): { id: number; seconds: number; fileId: string } | null {
  const m = JOURNAL_NAME.exec(name);
  if (!m) return null;
  const id = Number.parseInt(m[1] as string, 16);
  const seconds = Number.parseInt(m[2] as string, 16);
  if (!Number.isSafeInteger(id) || !Number.isSafeInteger(seconds)) return null;
  return { id, seconds, fileId: m[3] as string };
}

/**
 * Whether a temp name left by a previous run journals an upload linked to its final path (kept
 * by Stores.init for recoverJournal); any other goes. The upload's claim name on the same inode
 * (`claimPath(fileId)`, lock.ts LinkClaim) goes either way here, or its bytes would stay held.
 */
export async function isJournalEntry(
  path: string,
  name: string,
  storePath: string,
  claimPath: (fileId: string) => string,
): Promise<boolean> {
  const j = parseJournalName(name);
  if (!j) return false;
  const st = await lstat(path).catch(() => null);
  if (st?.isFile() !== true || st.nlink < 2) return false;
  await removeOwnClaim(claimPath(j.fileId), st);
  const fin = await lstat(pathForId(storePath, j.id, j.seconds)).catch(() => null);
  return fin !== null && fin.ino === st.ino && fin.dev === st.dev;
}

export interface RecoveryResult {
  /** Uploads that were committed (temp name removed). */
  kept: number;
  /** Uploads never committed (final file and temp name removed). */
  undone: number;
  /** Temp files that were not linked (removed). */
  removed: number;
}

async function recordedAt(db: Kysely<Schema>, fileId: string, path: string): Promise<boolean> {
  for (const table of FILE_TABLES) {
    const row = await db.selectFrom(table).select('file_path').where('id', '=', fileId).executeTakeFirst();
    if (row && row.file_path === path) return true;
  }
  return false;
}

/** Removes the claim name at `path` when it is another name of the temp file `of`. */
async function removeOwnClaim(path: string, of: { ino: number; dev: number }): Promise<void> {
  const c = await lstat(path).catch(() => null);
  if (c && c.ino === of.ino && c.dev === of.dev) await removeQuiet(path);
}

/**
 * Resolves the journal entries left in this process's temp folders by a previous run (see
 * above). Throws when the database cannot be asked; entries not resolved yet stay for the next
 * attempt.
 */
export async function recoverJournal(
  stores: Stores,
  db: Kysely<Schema>,
  log: Logger,
): Promise<RecoveryResult> {
  const r: RecoveryResult = { kept: 0, undone: 0, removed: 0 };
  for (let i = 0; i < stores.size; i++) {
    const tmp = stores.tmpDir(i);
    let names: string[];
    try {
      names = await readdir(tmp);
    } catch (e) {
      if (errorCodeOf(e) === 'ENOENT') continue;
      throw e;
    }
    for (const name of names) {
      const path = join(tmp, name);
      const j = parseJournalName(name);
      const st = await lstat(path).catch(() => null);
      if (!st) continue;
      if (!j || !st.isFile() || st.nlink < 2) {
        await removeQuiet(path);
        r.removed++;
        continue;
      }
      await removeOwnClaim(stores.claimPath(j.fileId), st);
      const finalPath = pathForId(stores.path(i), j.id, j.seconds);
      const fin = await lstat(finalPath).catch(() => null);
      if (!fin || fin.ino !== st.ino || fin.dev !== st.dev) {
        await removeQuiet(path);
        r.removed++;
        continue;
      }
      if (await recordedAt(db, j.fileId, finalPath)) {
        r.kept++;
      } else {
        await removeQuiet(finalPath);
        await fsyncDir(dirname(finalPath));
        r.undone++;
        log.warn({ fileId: j.fileId, path: finalPath }, 'removed a file whose upload was never committed');
      }
      await removeQuiet(path);
    }
  }
  if (r.kept + r.undone + r.removed > 0) log.info(r, 'commit journal recovered');
  return r;
}
