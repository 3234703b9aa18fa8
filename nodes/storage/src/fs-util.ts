import { createHash } from 'node:crypto';
import { unlinkSync } from 'node:fs';
import { type FileHandle, link, lstat, mkdir, open, rename, statfs, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { errorCodeOf } from '@dsm/common';
import { SNIFF_BYTES } from './sniff.ts';

/** Unlinks a file; a missing file is fine. */
/** removeQuiet, synchronously (a local file system: see Stores.local). */
export function removeQuietSync(path: string): void {
  try {
    unlinkSync(path);
  } catch (e) {
    if (errorCodeOf(e) !== 'ENOENT') throw e;
  }
}

export async function removeQuiet(path: string): Promise<void> {
  try {
    await unlink(path);
  } catch (e) {
    if (errorCodeOf(e) !== 'ENOENT') throw e;
  }
}

/** fsync of a directory, so a rename / new entry in it survives a crash. */
export async function fsyncDir(dir: string): Promise<void> {
  let fh: FileHandle | undefined;
  try {
    fh = await open(dir, 'r');
    await fh.sync();
  } catch (e) {
    // Some file systems cannot fsync a directory; the entry is then as durable as they allow.
    const c = errorCodeOf(e);
    if (c !== 'EINVAL' && c !== 'EISDIR' && c !== 'EPERM' && c !== 'ENOTSUP' && c !== 'EBADF') throw e;
  } finally {
    await fh?.close().catch(() => {});
  }
}

/**
 * Creates `dir` and any missing parents (the seed never did: quirk 4), then fsyncs the parents of
 * every folder it created so the new entries are durable.
 */
export async function mkdirDurable(dir: string): Promise<void> {
  const created = await mkdir(dir, { recursive: true });
  if (!created) return;
  const stop = dirname(created);
  let d = dirname(dir);
  for (;;) {
    await fsyncDir(d);
    if (d === stop || dirname(d) === d) break;
    d = dirname(d);
  }
}

/**
 * Folders known to exist (made durable by mkdirDurable in this process): a small upload skips
 * the mkdir of its final folder, which 512 files share. Bounded; a folder removed behind our
 * back makes the link fail with ENOENT, and the caller forgets it and creates it again.
 *
 * `sync(dir)` is fsyncDir on a handle kept open (the most recently synced `maxOpen` folders):
 * the group commit fsyncs the same final and temp folders batch after batch, and the open and
 * close around each fsync were two of its three file system calls. forget() drops the handle
 * too (a folder created again is another inode).
 */
export class KnownDirs {
  readonly #max: number;
  #dirs = new Set<string>();
  readonly #maxOpen: number;
  readonly #open = new Map<string, Promise<FileHandle | null>>();

  constructor(max = 4096, maxOpen = 32) {
    this.#max = max;
    this.#maxOpen = maxOpen;
  }

  async ensure(dir: string): Promise<void> {
    if (this.#dirs.has(dir)) return;
    await mkdirDurable(dir);
    if (this.#dirs.size >= this.#max) this.#dirs = new Set();
    this.#dirs.add(dir);
  }

  forget(dir: string): void {
    this.#dirs.delete(dir);
    this.#drop(dir);
  }

  /** fsync of `dir` through a kept handle (see above; `maxOpen` 0: none kept); errors as fsyncDir's. */
  async sync(dir: string): Promise<void> {
    if (this.#maxOpen === 0) return fsyncDir(dir);
    let h = this.#open.get(dir);
    if (h) {
      this.#open.delete(dir); // most recently used last
      this.#open.set(dir, h);
    } else {
      h = open(dir, 'r').catch((e: unknown) => {
        this.#open.delete(dir);
        throw e;
      });
      this.#open.set(dir, h);
      while (this.#open.size > this.#maxOpen) this.#drop(this.#open.keys().next().value as string);
    }
    try {
      const fh = await h;
      if (fh) await fh.sync();
    } catch (e) {
      this.#drop(dir);
      const c = errorCodeOf(e);
      if (c !== 'EINVAL' && c !== 'EISDIR' && c !== 'EPERM' && c !== 'ENOTSUP' && c !== 'EBADF') throw e;
    }
  }

  /** Closes every kept handle (the node's close). */
  async close(): Promise<void> {
    const all = [...this.#open.values()];
    this.#open.clear();
    await Promise.all(all.map((h) => h.then((fh) => fh?.close()).catch(() => {})));
  }

  #drop(dir: string): void {
    const h = this.#open.get(dir);
    if (!h) return;
    this.#open.delete(dir);
    // FileHandle.close waits for the operations in progress on it (a concurrent sync)
    void h.then((fh) => fh?.close()).catch(() => {});
  }
}

/**
 * Moves `src` to `dst` without ever replacing an existing `dst` (link + unlink; a file system
 * without hard links falls back to a checked rename). Throws EEXIST when `dst` exists.
 */
export async function moveNoReplace(src: string, dst: string): Promise<void> {
  try {
    await link(src, dst);
  } catch (e) {
    const c = errorCodeOf(e);
    if (c !== 'EPERM' && c !== 'ENOTSUP' && c !== 'EOPNOTSUPP' && c !== 'ENOSYS' && c !== 'EXDEV') throw e;
    const exists = await lstat(dst).then(
      () => true,
      () => false,
    );
    if (exists) throw Object.assign(new Error(`EEXIST: file already exists, ${dst}`), { code: 'EEXIST' });
    await rename(src, dst);
    return;
  }
  await unlink(src);
}

/** What is left of `list` after its first `written` bytes went out (a short write). */
function afterShortWrite(list: Uint8Array[], written: number): Uint8Array[] {
  let skip = written;
  const rest: Uint8Array[] = [];
  for (const c of list) {
    if (skip >= c.length) {
      skip -= c.length;
      continue;
    }
    rest.push(skip > 0 ? c.subarray(skip) : c);
    skip = 0;
  }
  return rest;
}

/** Writes all `chunks` (in order) at `position` (null = the current file position). */
export async function writeChunks(
  fh: Pick<FileHandle, 'writev'>,
  chunks: Uint8Array[],
  position: number | null,
): Promise<void> {
  let list = chunks.filter((c) => c.length > 0);
  let pos = position;
  while (list.length > 0) {
    const want = list.reduce((n, c) => n + c.length, 0);
    const { bytesWritten } = await fh.writev(list, pos ?? undefined);
    if (pos !== null) pos += bytesWritten;
    if (bytesWritten >= want) return;
    list = afterShortWrite(list, bytesWritten);
  }
}

export interface Received {
  bytes: number;
  /** Null when the caller asked for no hash (`ReceiveOptions.hash` false). */
  sha256: Buffer | null;
  /** The first bytes (for content sniffing). */
  head: Uint8Array;
}

/**
 * Bytes written between two early flushes of a big upload (receiveInto's `syncEvery`). A 1 GiB
 * upload left some 600 ms of its 2.3 s to its final fsync, a 64 MiB one 55 of 160 ms: the page
 * cache held it all until then. Flushed as it arrives, the disk writes while the socket is read.
 */
export const EARLY_SYNC_BYTES = 16 * 1024 * 1024;

export interface ReceiveOptions {
  /** Bytes that reached the file so far (also when the source fails midway). */
  onWritten?: (n: number) => void;
  /**
   * Each time this many more bytes were written, an `fdatasync` of the file is started (one at a
   * time, while receiving goes on), so the caller's final fsync finds little left to write; 0 or
   * absent: none. An early flush that fails fails the receive (Linux reports a write-back error
   * to one fsync only: the final one could succeed after it).
   */
  syncEvery?: number;
  /**
   * False: no SHA-256 of the bytes (a resumable upload's append, whose checksum is computed from
   * the whole file when it is first asked for). Hashing is most of the storage's CPU for a big
   * body: about 0.9 s per GiB on this machine kind, with SHA instructions.
   */
  hash?: boolean;
}

/**
 * Bytes of a received body between two young-generation collections (`collectYoung`). A storage
 * receiving an upload allocates little on V8's heap per 64 KiB socket chunk, so its 1 MiB young
 * generation filled only every 20 MiB or so (106 scavenges for 2 GiB, `--trace-gc`), and the
 * dead chunks' memory (outside the heap) piled up until then: a 1 GiB upload peaked at 93-99 MiB
 * RSS, a second one in the same process at 104-106 (the bound is 100). A scavenge every 4 MiB:
 * 76-78 and 87-89 MiB, CPU and throughput unchanged (3 interleaved rounds, docs/performance.md).
 * Not more often: chunks still in flight (a batch being filled and one being written) would
 * survive two scavenges and be promoted to the old generation, whose garbage waits for a full
 * collection (every 1 MiB: 135-145 MiB). Hence also at least four batches between two.
 */
const YOUNG_GC_BYTES = 4 * 1024 * 1024;

let youngGc: ((o: { type: 'minor' }) => void) | null | undefined;

/**
 * A young-generation collection now, through V8's `gc` extension: enabled once for contexts made
 * from then on (`--expose-gc`) and taken from a new one, so that the node's command line needs no
 * flag (the `expose-gc` package's way). Where that fails, nothing.
 */
export function collectYoung(): void {
  if (youngGc === undefined) {
    try {
      setFlagsFromString('--expose-gc');
      const gc: unknown = runInNewContext('gc');
      youngGc = typeof gc === 'function' ? (gc as (o: { type: 'minor' }) => void) : null;
    } catch {
      youngGc = null;
    }
  }
  youngGc?.({ type: 'minor' });
}

/**
 * Streams `source` into `fh` at `position` (null = current position), batching writes up to
 * `batchBytes`, hashing as it goes. Each chunk is written before the next is pulled from the
 * socket, so a slow disk slows the sender (backpressure) and memory stays at about one batch.
 */
export async function receiveInto(
  fh: Pick<FileHandle, 'writev' | 'datasync'>,
  source: AsyncIterable<Uint8Array>,
  batchBytes: number,
  position: number | null,
  opts?: ReceiveOptions & { hash?: true },
): Promise<Received & { sha256: Buffer }>;
export async function receiveInto(
  fh: Pick<FileHandle, 'writev' | 'datasync'>,
  source: AsyncIterable<Uint8Array>,
  batchBytes: number,
  position: number | null,
  opts: ReceiveOptions,
): Promise<Received>;
export async function receiveInto(
  fh: Pick<FileHandle, 'writev' | 'datasync'>,
  source: AsyncIterable<Uint8Array>,
  batchBytes: number,
  position: number | null,
  opts: ReceiveOptions = {},
): Promise<Received> {
  const { onWritten, syncEvery = 0 } = opts;
  const hash = opts.hash === false ? null : createHash('sha256');
  let head = new Uint8Array(0);
  let batch: Uint8Array[] = [];
  let batchLen = 0;
  let total = 0;
  // the socket's 64 KiB read buffers die young, but their memory waits for a scavenge (below)
  const gcEvery = Math.max(YOUNG_GC_BYTES, 4 * batchBytes);
  let sinceGc = 0;
  let pos = position;
  // One write may be in flight while the next batch is read from the socket (receiving and
  // writing overlap); at most two batches are held.
  let writing: Promise<void> | null = null;
  // At most one early flush in flight; its failure is thrown by the next flush or the drain.
  let syncing: Promise<void> | null = null;
  let syncFailed: { e: unknown } | null = null;
  let syncedUpTo = 0;
  const startSync = () => {
    if (syncEvery <= 0 || syncing || total - syncedUpTo < syncEvery) return;
    syncedUpTo = total;
    syncing = fh.datasync().then(
      () => {
        syncing = null;
      },
      (e) => {
        syncing = null;
        syncFailed = { e };
      },
    );
  };
  const flush = async () => {
    if (writing) {
      const w = writing;
      writing = null;
      await w;
    }
    if (syncFailed) throw (syncFailed as { e: unknown }).e;
    startSync();
    if (batchLen === 0) return;
    const b = batch;
    const n = batchLen;
    const at = pos;
    batch = [];
    batchLen = 0;
    if (pos !== null) pos += n;
    const w = writeChunks(fh, b, at).then(() => {
      total += n;
      onWritten?.(total);
    });
    w.catch(() => {}); // observed by the next flush
    writing = w;
  };
  const drain = async () => {
    await flush();
    if (writing) {
      const w = writing;
      writing = null;
      await w;
    }
    if (syncing) await syncing;
    if (syncFailed) throw (syncFailed as { e: unknown }).e;
  };
  try {
    for await (const chunk of source) {
      if (chunk.length === 0) continue;
      hash?.update(chunk);
      if (head.length < SNIFF_BYTES) {
        const more = chunk.subarray(0, SNIFF_BYTES - head.length);
        const h = new Uint8Array(head.length + more.length);
        h.set(head, 0);
        h.set(more, head.length);
        head = h;
      }
      batch.push(chunk);
      batchLen += chunk.length;
      sinceGc += chunk.length;
      if (sinceGc >= gcEvery) {
        sinceGc = 0;
        collectYoung();
      }
      if (batchLen >= batchBytes) await flush();
    }
  } catch (e) {
    // Keep what arrived (resumable appends rely on it), then report the failure.
    await drain().catch(() => {});
    throw e;
  }
  await drain();
  return { bytes: total, sha256: hash ? hash.digest() : null, head };
}

/**
 * Reads `length` bytes from `position` in chunks of at most `chunkBytes`, into two buffers used
 * in turn (no garbage per chunk: a 1 GiB download does not leave up to 64 MiB of dead buffers
 * waiting for the GC). A chunk stays valid only until the one after it is asked for: consumers
 * must be done with it by then (copy what they keep), as the protocol server's replyStream is.
 */
/**
 * The first read of readChunks: a 512 KiB read from the page cache took 0.15 ms at the median
 * but up to 4-8 ms on this machine kind, 64 KiB at most about 1 ms; the time to a range reply's
 * first byte is that of the first read (docs/performance.md, first byte of a range).
 */
const FIRST_READ_BYTES = 64 * 1024;

export async function* readChunks(
  fh: FileHandle,
  position: number,
  length: number,
  chunkBytes: number,
): AsyncGenerator<Uint8Array> {
  const size = Math.max(1, Math.min(chunkBytes, length));
  const bufs = [Buffer.allocUnsafe(size), Buffer.allocUnsafe(size)] as const;
  let turn = 0;
  let pos = position;
  let left = length;
  // the first read is short: the reply's first byte (a player's seek) waits for it alone
  let want = Math.min(size, FIRST_READ_BYTES);
  while (left > 0) {
    turn ^= 1;
    const buf = bufs[turn] as Buffer;
    const { bytesRead } = await fh.read(buf, 0, Math.min(want, left), pos);
    want = size;
    if (bytesRead === 0) throw new Error(`file ended ${left} bytes early`);
    pos += bytesRead;
    left -= bytesRead;
    yield buf.subarray(0, bytesRead);
  }
}

/** sha-256 of a whole open file plus its first bytes. */
export async function hashOpenFile(
  fh: FileHandle,
  size: number,
  chunkBytes: number,
): Promise<{ sha256: Buffer; head: Uint8Array }> {
  const hash = createHash('sha256');
  let head: Uint8Array | undefined;
  for await (const c of readChunks(fh, 0, size, chunkBytes)) {
    head ??= new Uint8Array(c.subarray(0, SNIFF_BYTES)); // a copy: the chunk's buffer is reused
    hash.update(c);
  }
  return { sha256: hash.digest(), head: head ?? new Uint8Array(0) };
}

export interface DiskSpace {
  totalBytes: number;
  freeBytes: number;
}

/** Total and available bytes of the file system holding `path`. */
export async function diskSpace(path: string): Promise<DiskSpace> {
  const s = await statfs(path);
  return { totalBytes: s.blocks * s.bsize, freeBytes: s.bavail * s.bsize };
}

/**
 * `diskSpace` of one folder, one statfs at a time (a statfs of a GlusterFS mount can block while
 * a replica is silent): concurrent callers share the call in flight, and `last` keeps the latest
 * reading with the time it was taken.
 */
export class SpaceReader {
  readonly path: string;
  last: { atMs: number; space: DiskSpace } | null = null;
  #inFlight: Promise<DiskSpace> | null = null;

  constructor(path: string) {
    this.path = path;
  }

  read(): Promise<DiskSpace> {
    this.#inFlight ??= diskSpace(this.path)
      .then((space) => {
        this.last = { atMs: Date.now(), space };
        return space;
      })
      .finally(() => {
        this.#inFlight = null;
      });
    return this.#inFlight;
  }
}
