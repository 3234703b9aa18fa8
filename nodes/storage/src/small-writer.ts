import { Worker } from 'node:worker_threads';
import type { Logger } from '@dsm/common';
import { removeQuietSync } from './fs-util.ts';

/**
 * A small upload's durable file steps, on a worker thread: create the temp file (unless the
 * caller passes one it already made), write the bytes, fsync, close, and hard-link it to its
 * final path.
 *
 * On the main thread each of these is a system call that waits on the file system's locks: a
 * create or a link in a folder waits while other uploads' fsyncs commit the ext4 journal, and
 * handing an fsync to libuv's thread pool wakes a thread. Measured at 2,000 uploads/s on this
 * machine kind, the five steps cost the storage's main thread about 170 µs per upload, a third
 * of its time (alone, without the contention: about 50 µs plus the fsync's wait). One message
 * each way costs it a few µs instead. The steps, their order and their failures are the same
 * as on the main thread (receiveUpload), so crash safety is unchanged: the temp name is the
 * upload's journal until its row is committed.
 *
 * One worker, started at the first small upload: the steps are short and synchronous but the
 * fsync, which runs on the worker's own thread pool, so the uploads of one batch overlap their
 * fsyncs. Each job is bounded by the body it carries (at most 64 KiB) and jobs in flight by the
 * uploads in flight (one per connection).
 */
export interface SmallFileJob {
  /** Temp file (the journal name). */
  tmp: string;
  /** Its folder, created again when it was removed under us. */
  tmpDir: string;
  /**
   * The caller created `tmp` (empty; a link claim needs the file): the worker opens it instead
   * of creating it. (Not a descriptor: Node warns when a thread closes another's.)
   */
  exists?: boolean;
  /** The whole body. */
  data: Uint8Array;
  /** Final path to hard-link the temp file to (its folder exists). */
  finalPath: string;
}

/** How the job ended: written and linked, or written and not linked (the caller decides). */
export interface SmallFileResult {
  /** The link failed with this error; the temp file is complete, fsynced and closed. */
  linkError?: NodeJS.ErrnoException;
}

/** A message's entry to the worker: a small file to write, or a file to remove. */
type WorkerJob =
  | (Omit<SmallFileJob, 'exists'> & { id: number; exists: boolean })
  | { id: number; unlink: string };

interface Reply {
  id: number;
  err?: { code?: string; message: string; syscall?: string; errno?: number };
  linkErr?: { code?: string; message: string; syscall?: string; errno?: number };
}

/** The worker's code: CommonJS, only `node:` modules, so it runs the same from the sources and the bundle. */
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const fs = require('node:fs');
const plain = (e) => ({ code: e && e.code, message: String(e && e.message), syscall: e && e.syscall, errno: e && e.errno });
// replies finished in one turn of the loop go back in one message
let replies = [];
const reply = (r) => {
  if (replies.length === 0) setImmediate(() => { const rs = replies; replies = []; parentPort.postMessage(rs); });
  replies.push(r);
};
const run = (m) => {
  if (m.unlink !== undefined) {
    try { fs.unlinkSync(m.unlink); } catch (e) { if (!e || e.code !== 'ENOENT') { reply({ id: m.id, err: plain(e) }); return; } }
    reply({ id: m.id });
    return;
  }
  let fd = -1;
  let created = false;
  const fail = (e) => {
    if (fd >= 0) { try { fs.closeSync(fd); } catch {} }
    if (created || m.exists) { try { fs.unlinkSync(m.tmp); } catch {} }
    reply({ id: m.id, err: plain(e) });
  };
  try {
    if (m.exists) fd = fs.openSync(m.tmp, 'r+');
    else {
      try {
        fd = fs.openSync(m.tmp, 'wx', 0o644);
      } catch (e) {
        if (!e || e.code !== 'ENOENT') throw e;
        fs.mkdirSync(m.tmpDir, { recursive: true });
        fd = fs.openSync(m.tmp, 'wx', 0o644);
      }
      created = true;
    }
    const data = m.data;
    let off = 0;
    while (off < data.length) off += fs.writeSync(fd, data, off, data.length - off, off);
  } catch (e) {
    fail(e);
    return;
  }
  fs.fsync(fd, (e) => {
    if (e) { fail(e); return; }
    try {
      const f = fd;
      fd = -1;
      fs.closeSync(f);
    } catch (c) {
      fail(c);
      return;
    }
    try {
      fs.linkSync(m.tmp, m.finalPath);
    } catch (l) {
      reply({ id: m.id, linkErr: plain(l) });
      return;
    }
    reply({ id: m.id });
  });
};
parentPort.on('message', (jobs) => { for (const m of jobs) run(m); });
`;

const asError = (p: NonNullable<Reply['err']>): NodeJS.ErrnoException =>
  Object.assign(new Error(p.message), {
    ...(p.code !== undefined ? { code: p.code } : {}),
    ...(p.errno !== undefined ? { errno: p.errno } : {}),
    syscall: p.syscall ?? 'write',
  });

export class SmallFileWriter {
  readonly #log: Logger;
  #worker: Worker | null = null;
  #next = 1;
  readonly #pending = new Map<
    number,
    { resolve: (r: SmallFileResult) => void; reject: (e: unknown) => void }
  >();
  #closed = false;
  #jobs: WorkerJob[] = [];
  #transfer: ArrayBuffer[] = [];

  readonly #source: string;

  /** `source`: the worker's code (tests put one that fails in its place). */
  constructor(log: Logger, opts: { source?: string } = {}) {
    this.#log = log;
    this.#source = opts.source ?? WORKER_SOURCE;
  }

  /** Jobs in flight (tests). */
  get pending(): number {
    return this.#pending.size;
  }

  /**
   * Runs the job. Rejects with the failing step's system error (`code`, `syscall`); the temp
   * file is then removed (when the worker created it, or the caller did: `exists`). Resolves with
   * `linkError` when only the link failed.
   */
  write(job: SmallFileJob): Promise<SmallFileResult> {
    if (this.#closed)
      return Promise.reject(asError({ code: 'ECANCELED', message: 'storage closing', syscall: 'open' }));
    const id = this.#next++;
    return new Promise<SmallFileResult>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      // the body's own buffer is moved, not copied, when nothing else shares it
      const d = job.data;
      if (d.byteOffset === 0 && d.byteLength === d.buffer.byteLength && d.buffer instanceof ArrayBuffer)
        this.#transfer.push(d.buffer);
      this.#post({
        id,
        tmp: job.tmp,
        tmpDir: job.tmpDir,
        exists: job.exists === true,
        data: d,
        finalPath: job.finalPath,
      });
    });
  }

  /**
   * Removes a file (a committed upload's journal name) on the worker; a missing file is fine.
   * Rejects with the unlink's error otherwise.
   */
  remove(path: string): Promise<void> {
    if (this.#closed) {
      removeQuietSync(path);
      return Promise.resolve();
    }
    const id = this.#next++;
    return new Promise<void>((resolve, reject) => {
      this.#pending.set(id, { resolve: () => resolve(), reject });
      this.#post({ id, unlink: path });
    });
  }

  #post(job: WorkerJob): void {
    this.#jobs.push(job);
    // the jobs of one turn of the event loop go in one message (one wake-up of the worker)
    if (this.#jobs.length === 1) setImmediate(this.#flush);
  }

  readonly #flush = () => {
    const jobs = this.#jobs;
    const transfer = this.#transfer;
    this.#jobs = [];
    this.#transfer = [];
    if (jobs.length === 0) return;
    const w = this.#worker ?? this.#start();
    w.postMessage(jobs, transfer);
  };

  /** Waits for the jobs in flight, then stops the worker (the node's close). */
  async close(): Promise<void> {
    this.#closed = true;
    const deadline = Date.now() + 10_000;
    while (this.#pending.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    const w = this.#worker;
    this.#worker = null;
    if (w) await w.terminate();
  }

  #start(): Worker {
    const w = new Worker(this.#source, {
      eval: true,
      name: 'dsm-small-files',
      // a small heap: its garbage is a few objects per job (the young generation would grow to 16 MiB)
      resourceLimits: { maxYoungGenerationSizeMb: 1, maxOldGenerationSizeMb: 16 },
    });
    w.unref();
    w.on('message', (rs: Reply[]) => {
      for (const r of rs) {
        const p = this.#pending.get(r.id);
        if (!p) continue;
        this.#pending.delete(r.id);
        if (r.err) p.reject(asError(r.err));
        else p.resolve(r.linkErr ? { linkError: asError(r.linkErr) } : {});
      }
    });
    const lost = (why: string) => {
      if (this.#worker !== w) return;
      this.#worker = null;
      if (!this.#closed)
        this.#log.error({ why }, 'small-file writer stopped; starting another at the next upload');
      const err = asError({ code: 'EIO', message: `small-file writer stopped (${why})`, syscall: 'write' });
      for (const p of this.#pending.values()) p.reject(err);
      this.#pending.clear();
      // jobs not yet sent failed with the rest: no later worker may run them (what a dead
      // worker left half done is what a crash leaves, resolved at the next start)
      this.#jobs = [];
      this.#transfer = [];
    };
    w.on('error', (e) => lost(String((e as Error)?.message ?? e)));
    w.on('exit', (code) => lost(`exit ${code}`));
    this.#worker = w;
    return w;
  }
}
