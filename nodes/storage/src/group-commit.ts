import { dirname } from 'node:path';
import { DsmError, ErrorCode, type Logger, messageOf } from '@dsm/common';
import { isOutcomeUnknown, isUniqueViolation } from '@dsm/db';
import { Errno } from '@dsm/packets';
import { exists, ioFailure } from './env.ts';
import { fsyncDir, removeQuiet } from './fs-util.ts';
import { dbFailure, type FileMeta } from './meta.ts';

/** One finished upload waiting for its durable steps. */
export interface PendingFile {
  meta: FileMeta;
  /** Absolute final path (`meta.path`), already linked; its folder is not fsynced yet. */
  finalPath: string;
  /**
   * The temp file, still linked to the same inode, that journals the upload until its row is
   * committed (see recoverJournal); null when the store cannot hard-link (the file was renamed).
   */
  journal: string | null;
  /** The upload still holds its claim on the file id (checked right before the commit). */
  stillClaimed: () => Promise<boolean>;
}

interface Waiter {
  p: PendingFile;
  resolve: () => void;
  reject: (e: unknown) => void;
}

/** The row-writing side of the committer (MetaStore). */
export interface RowWriter {
  insert(m: FileMeta): Promise<void>;
  insertBatch(ms: readonly FileMeta[]): Promise<void>;
}

export interface GroupCommitOptions {
  /** Most uploads in one batch (one multi-row INSERT per table). */
  maxBatch?: number;
  /** Most uploads waiting; more get errno BUSY (every byte from the network is hostile). */
  maxQueue?: number;
  /** Batches committed at once (default 2). */
  maxInFlight?: number;
  /** fsync of a folder (default fsyncDir; the storage passes KnownDirs.sync, kept handles). */
  syncDir?: (dir: string) => Promise<void>;
  /**
   * Removes a committed upload's journal name (default removeQuiet; the storage passes a
   * synchronous unlink on a local file system: a metadata call of microseconds there).
   */
  removeJournal?: (path: string) => Promise<void>;
}

const busyClaim = (fileId: string) =>
  new DsmError(
    ErrorCode.IO,
    `Upload Busy, Fileid: ${fileId} (claim taken over while this upload stalled)`,
    Errno.BUSY,
  );

/**
 * Group commit of finished uploads. Each upload has fsynced its own file and linked it into its
 * final folder; what is left is shared: every upload that finished while the previous batch
 * was being committed goes into the next one, which
 *
 * 1. checks each upload still holds its claim as it joins (a stalled one whose claim was taken
 *    over fails BUSY and its file goes),
 * 2. fsyncs each distinct final folder and temp folder once (the new names survive a crash),
 * 3. inserts every row in one transaction,
 * 4. answers each upload, then removes the journal names.
 *
 * No upload is answered before its file, its folder entry and its row are durable. A batch
 * whose transaction fails is retried one row per transaction, so a duplicate id or a bad row
 * fails only its own upload; a failed upload's file is removed, except when the database was
 * lost during the commit (the row may exist): then file and journal stay and the journal is
 * resolved at the next start (recoverJournal).
 *
 * The batch size adapts by itself: while one batch commits the next one fills, so a lone upload
 * waits for nothing but its own steps and 16 concurrent ones share one fsync and one commit.
 */
export class GroupCommitter {
  readonly #rows: RowWriter;
  readonly #log: Logger;
  readonly #maxBatch: number;
  readonly #maxQueue: number;
  readonly #maxInFlight: number;
  readonly #syncDir: (dir: string) => Promise<void>;
  readonly #removeJournal: (path: string) => Promise<void>;
  #queue: Waiter[] = [];
  /** Batches being committed. */
  readonly #inFlight = new Set<Promise<void>>();
  #scheduled = false;
  #batches = 0;
  #committed = 0;
  readonly #cleanups = new Set<Promise<void>>();

  constructor(rows: RowWriter, log: Logger, opts: GroupCommitOptions = {}) {
    this.#rows = rows;
    this.#log = log;
    this.#maxBatch = opts.maxBatch ?? 128;
    this.#maxQueue = opts.maxQueue ?? 4096;
    this.#maxInFlight = opts.maxInFlight ?? 2;
    this.#syncDir = opts.syncDir ?? fsyncDir;
    this.#removeJournal = opts.removeJournal ?? removeQuiet;
  }

  /** Batches committed so far and uploads in them (for tests and metrics). */
  get stats(): { batches: number; committed: number } {
    return { batches: this.#batches, committed: this.#committed };
  }

  /** Resolves once the upload is durable and recorded; rejects with its own error reply. */
  async commit(p: PendingFile): Promise<void> {
    if (this.#queue.length >= this.#maxQueue) {
      const full = new DsmError(
        ErrorCode.IO,
        `Upload Busy, Fileid: ${p.meta.fileId} (commit queue full)`,
        Errno.BUSY,
      );
      return new Promise<void>((resolve, reject) => this.#fail({ p, resolve, reject }, full, true));
    }
    // 1. the claim, checked by each upload as it joins (a file read in a shared folder), so the
    //    batch does not wait for the slowest read
    if (!(await p.stillClaimed().catch(() => false))) {
      return new Promise<void>((resolve, reject) =>
        this.#fail({ p, resolve, reject }, busyClaim(p.meta.fileId), true),
      );
    }
    return new Promise<void>((resolve, reject) => {
      this.#queue.push({ p, resolve, reject });
      // setImmediate: uploads finishing in the same turn of the event loop join this batch
      if (!this.#scheduled) {
        this.#scheduled = true;
        setImmediate(() => {
          this.#scheduled = false;
          this.#pump();
        });
      }
    });
  }

  /** Waits for the batches in progress and their journal removals (the node's close). */
  async close(): Promise<void> {
    while (this.#inFlight.size > 0 || this.#scheduled) {
      await Promise.all([...this.#inFlight, new Promise((r) => setImmediate(r))]);
    }
    await Promise.all([...this.#cleanups]);
  }

  /** Starts batches while fewer than maxInFlight run (the folder fsyncs of one overlap the commit of another). */
  #pump(): void {
    while (this.#inFlight.size < this.#maxInFlight && this.#queue.length > 0) {
      const batch = this.#queue.splice(0, this.#maxBatch);
      const run: Promise<void> = this.#commitBatch(batch)
        .catch((e) => {
          // not expected (every step handles its failures); never leave an upload unanswered
          this.#log.error({ err: e }, 'group commit failed');
          for (const w of batch) w.reject(e);
        })
        .finally(() => {
          this.#inFlight.delete(run);
          this.#pump();
        });
      this.#inFlight.add(run);
    }
  }

  async #commitBatch(batch: Waiter[]): Promise<void> {
    this.#batches++;
    let live = batch;
    // 2. folder fsyncs, each folder once (1., the claims, were checked as uploads joined)
    const dirs = new Map<string, Promise<unknown>>();
    const sync = (d: string) => {
      let r = dirs.get(d);
      if (!r) {
        r = this.#syncDir(d).then(
          () => null,
          (e: unknown) => e,
        );
        dirs.set(d, r);
      }
      return r;
    };
    const synced = await Promise.all(
      live.map(async (w) => {
        const errs = await Promise.all([
          sync(dirname(w.p.finalPath)),
          w.p.journal ? sync(dirname(w.p.journal)) : null,
        ]);
        return errs.find((e) => e !== null) ?? null;
      }),
    );
    const ready: Waiter[] = [];
    for (let i = 0; i < live.length; i++) {
      const w = live[i] as Waiter;
      const err = synced[i];
      if (err) this.#fail(w, ioFailure(`Receive and Save File Fail, Fileid: ${w.p.meta.fileId}`, err), true);
      else ready.push(w);
    }
    live = ready;
    if (live.length === 0) return;
    // 3. rows, one transaction
    try {
      await this.#rows.insertBatch(live.map((w) => w.p.meta));
    } catch (e) {
      if (isOutcomeUnknown(e)) {
        for (const w of live) this.#failUnknown(w, e);
        return;
      }
      if (live.length === 1) {
        this.#fail(live[0] as Waiter, rowError(e, live[0] as Waiter), true);
        return;
      }
      this.#log.warn(
        { err: messageOf(e), uploads: live.length },
        'batch INSERT failed; inserting its rows one by one',
      );
      const alone = await Promise.all(
        live.map((w) =>
          this.#rows.insert(w.p.meta).then(
            () => null,
            (x: unknown) => x,
          ),
        ),
      );
      const ok: Waiter[] = [];
      for (let i = 0; i < live.length; i++) {
        const w = live[i] as Waiter;
        const x = alone[i];
        if (x === null) ok.push(w);
        else if (isOutcomeUnknown(x)) this.#failUnknown(w, x);
        else this.#fail(w, rowError(x, w), true);
      }
      live = ok;
    }
    // 4. answers, then the journal names (off the batch's path: the next batch need not wait;
    //    a name left by a crash now is removed by the next start's recovery, the row being in)
    this.#committed += live.length;
    for (const w of live) w.resolve();
    const journals = live.flatMap((w) => (w.p.journal ? [w.p.journal] : []));
    if (journals.length > 0) {
      const done: Promise<void> = Promise.all(
        journals.map((j) =>
          this.#removeJournal(j).catch((e) =>
            this.#log.warn({ err: messageOf(e), path: j }, 'cannot remove a commit journal entry'),
          ),
        ),
      ).then(() => {
        this.#cleanups.delete(done);
      });
      this.#cleanups.add(done);
    }
  }

  /** Fails an upload whose row certainly does not exist: its file and journal go. */
  #fail(w: Waiter, e: unknown, removeFile: boolean): void {
    const undo = async () => {
      if (removeFile) await removeQuiet(w.p.finalPath);
      if (w.p.journal) await removeQuiet(w.p.journal);
    };
    void undo()
      .catch((u) => this.#log.error({ err: u, path: w.p.finalPath }, 'cannot undo a failed upload'))
      .finally(() => w.reject(e));
  }

  /**
   * The database was lost during the commit: the row may exist, and a row must never point at a
   * missing file, so file and journal stay; the next start resolves the journal either way.
   */
  #failUnknown(w: Waiter, e: unknown): void {
    this.#log.warn(
      { err: messageOf(e), fileId: w.p.meta.fileId, path: w.p.finalPath },
      'database lost during the INSERT; the file is kept in case the row was written',
    );
    w.reject(dbFailure(e, `INSERT Database Fail, Fileid: ${w.p.meta.fileId}`));
  }
}

function rowError(e: unknown, w: Waiter): DsmError {
  if (isUniqueViolation(e)) return exists(w.p.meta.fileId);
  return dbFailure(e, `INSERT Database Fail, Fileid: ${w.p.meta.fileId}`);
}
