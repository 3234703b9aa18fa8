import { randomBytes } from 'node:crypto';
import { existsSync, linkSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { newFileId } from '@dsm/client';
import { createLogger, isDsmError } from '@dsm/common';
import { createDb, type DbHandle, migrate } from '@dsm/db';
import { MemoryKvStore } from '@dsm/kv';
import { Errno } from '@dsm/packets';
import { type Backend, mariadbBackend, rejection, sqliteBackend } from '@dsm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { journalName, recoverJournal } from './commit-journal.ts';
import { GroupCommitter, type PendingFile, type RowWriter } from './group-commit.ts';
import { type FileMeta, MetaStore } from './meta.ts';
import { fileTableFor, pathForId } from './seed-rules.ts';
import { Stores } from './store.ts';
import { openScratch } from './test-support.ts';

const log = createLogger('group-commit-test');
const BACKENDS: (() => Backend)[] = [sqliteBackend, mariadbBackend];
const USER = 'gc-user';
const TABLE = fileTableFor(USER);

/** Rows go to the real MetaStore; `gate` holds each batch until opened, `batches` records them. */
class GatedRows implements RowWriter {
  readonly batches: number[] = [];
  #open: Promise<void> = Promise.resolve();
  #release: () => void = () => {};
  constructor(readonly meta: MetaStore) {}
  close(): void {
    this.#open = new Promise((r) => {
      this.#release = r;
    });
  }
  open(): void {
    this.#release();
  }
  async insert(m: FileMeta): Promise<void> {
    await this.meta.insert(m);
  }
  async insertBatch(ms: readonly FileMeta[]): Promise<void> {
    await this.#open;
    this.batches.push(ms.length);
    await this.meta.insertBatch(ms);
  }
}

describe.each(BACKENDS.map((f) => [f().name, f] as const))('group commit on %s', (_name, makeBackend) => {
  let dir = '';
  let backend: Backend | undefined;
  let dbh: DbHandle;
  let meta: MetaStore;
  let stores: Stores;
  let nextId = 1000;

  beforeAll(async () => {
    const s = await openScratch(makeBackend, 'dsm-gc-');
    dir = s.dir;
    backend = s.backend;
    dbh = createDb(s.dbUrl);
    await migrate(dbh.db, dbh.dialect, 'storage');
    meta = new MetaStore(dbh.db, new MemoryKvStore(), 0, log);
    stores = new Stores([join(dir, 'store')], 'test-1');
    await stores.init();
  });
  afterAll(async () => {
    await dbh?.close();
    await backend?.cleanup();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** A finished upload as receiveUpload leaves it: temp file written, linked to its final path. */
  function finished(fileId = newFileId(), claimed = true): PendingFile {
    const id = nextId++;
    const seconds = Math.floor(Date.now() / 1000);
    const journal = join(stores.tmpDir(0), journalName(id, seconds, fileId));
    const finalPath = pathForId(stores.path(0), id, seconds);
    writeFileSync(journal, randomBytes(4096));
    mkdirSync(dirname(finalPath), { recursive: true });
    linkSync(journal, finalPath);
    return {
      meta: {
        table: TABLE,
        fileId,
        appId: 'tnvideo',
        userId: USER,
        path: finalPath,
        size: 4096,
        contentType: 'application/octet-stream',
        sha256: '0'.repeat(64),
        mtimeMs: Date.now(),
      },
      finalPath,
      journal,
      stillClaimed: async () => claimed,
    };
  }

  const rowOf = (fileId: string) =>
    dbh.db.selectFrom(TABLE).select(['id', 'file_path']).where('id', '=', fileId).executeTakeFirst();

  it('concurrent uploads share one transaction, and none is answered before its row is committed', async () => {
    const rows = new GatedRows(meta);
    const gc = new GroupCommitter(rows, log);
    rows.close();
    const files = Array.from({ length: 16 }, () => finished());
    const answered: string[] = [];
    const done = files.map((p) => gc.commit(p).then(() => answered.push(p.meta.fileId)));
    await new Promise((r) => setTimeout(r, 100));
    expect(answered).toEqual([]); // the batch is held before its INSERT: nobody is told "stored"
    for (const p of files) expect(await rowOf(p.meta.fileId)).toBeUndefined();
    rows.open();
    await Promise.all(done);
    await gc.close();
    expect(rows.batches).toEqual([16]);
    for (const p of files) {
      expect((await rowOf(p.meta.fileId))?.file_path).toBe(p.finalPath);
      expect(existsSync(p.finalPath)).toBe(true);
    }
    expect(readdirSync(stores.tmpDir(0))).toEqual([]); // journal names go once the rows are in
    expect(gc.stats).toEqual({ batches: 1, committed: 16 });
  });

  it('uploads arriving while a batch commits form the next batch', async () => {
    const rows = new GatedRows(meta);
    const gc = new GroupCommitter(rows, log);
    rows.close();
    const first = gc.commit(finished());
    await new Promise((r) => setTimeout(r, 50));
    const more = Array.from({ length: 5 }, () => gc.commit(finished()));
    rows.open();
    await Promise.all([first, ...more]);
    expect(rows.batches).toEqual([1, 5]);
  });

  it('a duplicate id fails only its own upload (EXISTS, its file removed); the rest of the batch commits', async () => {
    const taken = finished();
    await meta.insert(taken.meta);
    const dup = finished(taken.meta.fileId);
    const others = Array.from({ length: 4 }, () => finished());
    const gc = new GroupCommitter(meta, log);
    const results = await Promise.allSettled([...others, dup].map((p) => gc.commit(p)));
    expect(results.slice(0, 4).map((r) => r.status)).toEqual([
      'fulfilled',
      'fulfilled',
      'fulfilled',
      'fulfilled',
    ]);
    const e = (results[4] as PromiseRejectedResult).reason;
    expect(isDsmError(e) && e.errno).toBe(Errno.EXISTS);
    expect(existsSync(dup.finalPath)).toBe(false);
    expect(existsSync(taken.finalPath)).toBe(true); // the recorded file is untouched
    expect((await rowOf(taken.meta.fileId))?.file_path).toBe(taken.finalPath);
    for (const p of others) expect((await rowOf(p.meta.fileId))?.file_path).toBe(p.finalPath);
    await gc.close();
    rmSync(taken.journal as string, { force: true });
    expect(readdirSync(stores.tmpDir(0))).toEqual([]);
  });

  it('an upload that lost its claim or whose folder cannot be synced fails alone, leaving nothing', async () => {
    const lost = finished(newFileId(), false);
    nextId += 512; // a final folder of its own (512 ids per folder)
    const gone = finished();
    nextId += 512;
    const ok = finished();
    rmSync(dirname(gone.finalPath), { recursive: true }); // its folder vanished: no fsync possible
    const gc = new GroupCommitter(meta, log);
    const [a, b, c] = await Promise.allSettled([lost, gone, ok].map((p) => gc.commit(p)));
    const busy = (a as PromiseRejectedResult).reason;
    expect(isDsmError(busy) && busy.errno).toBe(Errno.BUSY);
    const io = (b as PromiseRejectedResult).reason;
    expect(isDsmError(io) && io.errno).toBe(Errno.IO_ERROR);
    expect(c?.status).toBe('fulfilled');
    expect(await rowOf(lost.meta.fileId)).toBeUndefined();
    expect(await rowOf(gone.meta.fileId)).toBeUndefined();
    expect(existsSync(lost.finalPath)).toBe(false);
    await gc.close();
    expect(readdirSync(stores.tmpDir(0))).toEqual([]);
  });

  it('recovery after a crash keeps committed uploads, removes uncommitted ones and stray temp files', async () => {
    const committed = finished();
    await meta.insert(committed.meta); // the row went in, the process died before the journal went
    const uncommitted = finished(); // linked, never recorded
    const stray = join(stores.tmpDir(0), `${newFileId()}.abc`); // still receiving when killed
    writeFileSync(stray, 'x');
    const r = await recoverJournal(stores, dbh.db, log);
    expect(r).toEqual({ kept: 1, undone: 1, removed: 1 });
    expect(existsSync(committed.finalPath)).toBe(true);
    expect(existsSync(uncommitted.finalPath)).toBe(false);
    expect(readdirSync(stores.tmpDir(0))).toEqual([]);
    // a restart's init leaves journal entries for the recovery and removes the rest
    const again = finished();
    writeFileSync(stray, 'x');
    await new Stores([stores.path(0)], 'test-1').init();
    expect(readdirSync(stores.tmpDir(0))).toEqual([again.journal?.split('/').pop()]);
    expect(await recoverJournal(stores, dbh.db, log)).toEqual({ kept: 0, undone: 1, removed: 0 });
  });

  it('rejects uploads past the queue bound with BUSY', async () => {
    const rows = new GatedRows(meta);
    const gc = new GroupCommitter(rows, log, { maxQueue: 2, maxInFlight: 1 });
    rows.close();
    const pause = () => new Promise((r) => setTimeout(r, 30));
    const a = gc.commit(finished()); // the batch being committed (held at its INSERT)
    await pause();
    const waiting = [gc.commit(finished()), gc.commit(finished())]; // the queue, full
    await pause();
    const over = finished();
    const e = await rejection(gc.commit(over));
    expect(isDsmError(e) && e.errno).toBe(Errno.BUSY);
    rows.open();
    await Promise.all([a, ...waiting]);
    expect(rows.batches).toEqual([1, 2]);
    // the refused upload's file and journal are gone with it
    expect(existsSync(over.finalPath)).toBe(false);
    expect(existsSync(over.journal as string)).toBe(false);
  });
});
