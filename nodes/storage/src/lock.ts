import { randomBytes } from 'node:crypto';
import { linkSync, lstatSync } from 'node:fs';
import { link, lstat, open, rename, stat, utimes, writeFile } from 'node:fs/promises';
import { DsmError, ErrorCode, errorCodeOf } from '@dsm/common';
import { Errno } from '@dsm/packets';
import { removeQuiet, removeQuietSync } from './fs-util.ts';

/** How long a lock is valid without a refresh; holders refresh every third of it. */
export const LOCK_TTL_MS = 60_000;
/**
 * The claim an upload holds on its file id (file-ops.ts): short, so a storage killed mid-upload
 * blocks that id for seconds, not a minute (the client waits that out and retries); refreshed
 * every 2 s while the upload runs.
 */
export const UPLOAD_CLAIM_TTL_MS = 6000;

interface LockContent {
  token: string;
  owner: string;
  expiresMs: number;
}

/** A lock file is a short JSON object; anything longer is damaged. */
const LOCK_READ_MAX = 512;

/** The lock file's text: open, one read, close (readFile would also fstat and read to EOF). */
async function readSmall(path: string): Promise<string> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(LOCK_READ_MAX);
    const { bytesRead } = await fh.read(buf, 0, LOCK_READ_MAX, 0);
    return buf.toString('utf8', 0, bytesRead);
  } finally {
    await fh.close();
  }
}

async function readLock(path: string, ttlMs: number): Promise<LockContent | null> {
  try {
    const text = await readSmall(path);
    const v = JSON.parse(text) as Partial<LockContent>;
    if (typeof v.token === 'string' && typeof v.expiresMs === 'number') {
      return { token: v.token, owner: String(v.owner ?? ''), expiresMs: v.expiresMs };
    }
  } catch (e) {
    if (errorCodeOf(e) === 'ENOENT') return null;
  }
  // Unreadable (being written right now, or damaged): valid for a TTL after its last change.
  try {
    const s = await stat(path);
    return { token: '', owner: '', expiresMs: s.mtimeMs + ttlMs };
  } catch (e) {
    if (errorCodeOf(e) === 'ENOENT') return null;
    throw e;
  }
}

const busy = (what: string) => new DsmError(ErrorCode.IO, `Upload Busy, Fileid: ${what}`, Errno.BUSY);

/**
 * An exclusive lock file next to a resumable upload's partial file, valid across every storage
 * sharing the folder: created with O_EXCL and holding an expiry; an expired lock (its holder
 * died) is stolen by renaming it aside, checking that what was moved is the expired lock seen
 * before (a live one is put back), and creating a fresh one.
 */
export class FileLock {
  readonly path: string;
  readonly #token: string;
  readonly #owner: string;
  readonly #ttlMs: number;
  readonly #timer: ReturnType<typeof setInterval>;
  /** performance.now() of the last held() that found the lock file ours (-Infinity: none). */
  #heldSeenAt = Number.NEGATIVE_INFINITY;
  #released = false;
  #refreshing: Promise<void> = Promise.resolve();

  private constructor(path: string, token: string, owner: string, ttlMs: number) {
    this.path = path;
    this.#token = token;
    this.#owner = owner;
    this.#ttlMs = ttlMs;
    this.#timer = setInterval(() => void this.refresh(), Math.max(10, Math.floor(ttlMs / 3)));
    this.#timer.unref();
  }

  /** Takes the lock or throws errno BUSY (`label` names the upload in the message). */
  static async acquire(path: string, owner: string, label: string, ttlMs = LOCK_TTL_MS): Promise<FileLock> {
    for (let attempt = 0; attempt < 4; attempt++) {
      const token = randomBytes(12).toString('hex');
      const content: LockContent = { token, owner, expiresMs: Date.now() + ttlMs };
      try {
        const fh = await open(path, 'wx', 0o644);
        try {
          await fh.writeFile(JSON.stringify(content));
        } finally {
          await fh.close();
        }
        return new FileLock(path, token, owner, ttlMs);
      } catch (e) {
        if (errorCodeOf(e) !== 'EEXIST') throw e;
      }
      await takeOverExpired(path, ttlMs, label);
    }
    throw busy(label);
  }

  get token(): string {
    return this.#token;
  }

  /** Extends the expiry (only while the lock file is still ours). */
  refresh(): Promise<void> {
    this.#refreshing = this.#refreshing
      .then(async () => {
        if (this.#released) return;
        const cur = await readLock(this.path, this.#ttlMs);
        if (!cur || (cur.token !== '' && cur.token !== this.#token)) return;
        const content: LockContent = {
          token: this.#token,
          owner: this.#owner,
          expiresMs: Date.now() + this.#ttlMs,
        };
        // a new file renamed into place: a reader never sees a half-written lock (held() before
        // a commit took a lock read mid-rewrite as lost during a GlusterFS stall, HA fault (e))
        const next = `${this.path}.refresh-${randomBytes(6).toString('hex')}`;
        try {
          await writeFile(next, JSON.stringify(content));
          await rename(next, this.path);
        } finally {
          await removeQuiet(next).catch(() => {});
        }
      })
      .catch(() => {});
    return this.#refreshing;
  }

  /**
   * The lock file is still this lock (nobody stole it after it expired). An upload checks this
   * right before it commits: a holder that stalled past its expiry must not commit after another
   * member took the file id over.
   */
  async held(): Promise<boolean> {
    if (this.#released) return false;
    const at = performance.now();
    const cur = await readLock(this.path, this.#ttlMs).catch(() => null);
    const ours = cur !== null && cur.token === this.#token;
    this.#heldSeenAt = ours ? at : Number.NEGATIVE_INFINITY;
    return ours;
  }

  /**
   * held() found the lock ours less than half a TTL ago: nobody can have taken it over since
   * (that needs it expired by the taker's clock, and it was valid for a whole TTL when seen),
   * unless the clocks of the members sharing the folder differ by more than half a TTL. The
   * release then skips its own read of the lock file: the check before an upload's commit
   * serves both.
   */
  #young(): boolean {
    return performance.now() - this.#heldSeenAt < this.#ttlMs / 2;
  }

  /** Removes the lock file if it is still ours. */
  async release(): Promise<void> {
    if (this.#released) return;
    this.#released = true;
    clearInterval(this.#timer);
    await this.#refreshing;
    if (this.#young()) {
      await removeQuiet(this.path);
      return;
    }
    const cur = await readLock(this.path, this.#ttlMs).catch(() => null);
    if (cur && cur.token === this.#token) await removeQuiet(this.path);
  }
}

/** True when a lock file exists and has not expired (used by the sweeper). */
export async function isLockHeld(path: string, ttlMs = LOCK_TTL_MS): Promise<boolean> {
  const cur = await readLock(path, ttlMs).catch(() => null);
  return cur !== null && Date.now() < cur.expiresMs;
}

/** What an upload holds on its file id while it runs (a FileLock or a LocalClaims entry). */
export interface UploadClaim {
  /** Still this upload's (checked right before the commit). */
  held(): Promise<boolean>;
  release(): Promise<void>;
}

/**
 * Upload claims kept in this process only, for stores no other storage writes to
 * (`storesShared: false`): a Set look-up instead of a lock file per upload. Bounded by the
 * uploads in progress (the server's connection limit).
 */
export class LocalClaims {
  readonly #held = new Set<string>();

  get size(): number {
    return this.#held.size;
  }

  /** Claims `fileId` or throws errno BUSY. */
  acquire(fileId: string): UploadClaim {
    if (this.#held.has(fileId)) throw busy(fileId);
    this.#held.add(fileId);
    let released = false;
    return {
      held: async () => !released,
      release: async () => {
        if (released) return;
        released = true;
        this.#held.delete(fileId);
      },
    };
  }
}

/** Errors of `link` that mean "no hard link here" (another file system, or none supported). */
const NO_LINK = new Set(['EXDEV', 'EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS', 'EMLINK']);

/**
 * An upload's claim on its file id in a shared store folder, made by hard-linking the upload's
 * own temp file (already created) to the claim path: one `link` instead of creating, writing
 * and closing a lock file (a new inode, the costliest step of a small upload on ext4), and one
 * `lstat` to check it instead of open, read and close. The claim is the inode: it is ours while
 * the claim path names our temp file's inode. Its expiry is the inode's mtime + ttl (every write
 * of the body moves it, and a timer touches it every third of the ttl, as FileLock refreshes),
 * so every reader, including FileLock and isLockHeld of an older member (a body is not lock
 * JSON: they fall back to the mtime), sees the same rule. An expired claim (its holder died) is
 * taken over the way FileLock does it: renamed aside, checked, removed.
 *
 * `acquire` returns null where hard links cannot be made (another file system, or none
 * supported): the caller takes a FileLock instead.
 *
 * The storage takes a LinkClaim only on a local file system (Stores.local), so its link, lstats
 * and unlink are synchronous: metadata calls that take microseconds there, where each round
 * trip through libuv's thread pool cost 40-60 µs of CPU (an upload made four).
 */
export class LinkClaim implements UploadClaim {
  readonly path: string;
  readonly #ino: number;
  readonly #dev: number;
  readonly #ttlMs: number;
  readonly #timer: ReturnType<typeof setInterval>;
  /** When held() last found the claim ours. */
  #heldSeenAt = Number.NEGATIVE_INFINITY;
  #released = false;

  private constructor(path: string, ino: number, dev: number, ttlMs: number) {
    this.path = path;
    this.#ino = ino;
    this.#dev = dev;
    this.#ttlMs = ttlMs;
    this.#timer = setInterval(() => void this.#touch(), Math.max(10, Math.floor(ttlMs / 3)));
    this.#timer.unref();
  }

  /**
   * Claims `path` with the inode of `tempFile` or throws errno BUSY; null when no hard link can
   * be made there.
   */
  static async acquire(
    path: string,
    tempFile: string,
    label: string,
    ttlMs: number,
  ): Promise<LinkClaim | null> {
    for (let attempt = 0; attempt < 4; attempt++) {
      try {
        linkSync(tempFile, path);
        const st = lstatSync(path);
        return new LinkClaim(path, st.ino, st.dev, ttlMs);
      } catch (e) {
        const c = errorCodeOf(e);
        if (c !== undefined && NO_LINK.has(c)) return null;
        if (c !== 'EEXIST') throw e;
      }
      await takeOverExpired(path, ttlMs, label);
    }
    throw busy(label);
  }

  #ours(): boolean {
    let st: ReturnType<typeof lstatSync> | undefined;
    try {
      st = lstatSync(this.path, { throwIfNoEntry: false });
    } catch {
      return false;
    }
    return st !== undefined && st.ino === this.#ino && st.dev === this.#dev;
  }

  async #touch(): Promise<void> {
    if (this.#released) return;
    try {
      if (!this.#ours()) return;
      const now = new Date();
      await utimes(this.path, now, now);
    } catch {
      // the next tick tries again; the holder's check before commit decides
    }
  }

  /** The claim path still names this upload's temp file (checked right before the commit). */
  async held(): Promise<boolean> {
    if (this.#released) return false;
    const at = performance.now();
    const ours = this.#ours();
    this.#heldSeenAt = ours ? at : Number.NEGATIVE_INFINITY;
    return ours;
  }

  async release(): Promise<void> {
    if (this.#released) return;
    this.#released = true;
    clearInterval(this.#timer);
    // seen ours less than half a ttl ago: nobody can have taken it over since (see FileLock)
    if (performance.now() - this.#heldSeenAt < this.#ttlMs / 2 || this.#ours()) {
      removeQuietSync(this.path);
    }
  }
}

/**
 * Another holder's lock or claim is at `path`: errno BUSY while it is valid; an expired one (its
 * holder died) is moved aside atomically (only one taker's rename succeeds), checked to be the
 * one seen expired (one someone else just took is put back, and BUSY), and removed. Returns when
 * the caller may try to take `path` again.
 */
async function takeOverExpired(path: string, ttlMs: number, label: string): Promise<void> {
  const held = await claimAt(path, ttlMs);
  if (!held) return; // released meanwhile
  if (Date.now() < held.expiresMs) throw busy(label);
  const aside = `${path}.stale-${randomBytes(6).toString('hex')}`;
  try {
    await rename(path, aside);
  } catch (e) {
    if (errorCodeOf(e) === 'ENOENT') return;
    throw e;
  }
  const moved = await claimAt(aside, ttlMs);
  if (moved && moved.id !== held.id && Date.now() < moved.expiresMs) {
    await link(aside, path).catch(() => {});
    await removeQuiet(aside);
    throw busy(label);
  }
  await removeQuiet(aside);
}

/**
 * The claim found at `path`: a link claim (more than one name: a temp file's) expires at its
 * mtime + ttl and is identified by its inode; anything else is read as a FileLock.
 */
async function claimAt(path: string, ttlMs: number): Promise<{ id: string; expiresMs: number } | null> {
  const st = await lstat(path).catch((e: unknown) => {
    if (errorCodeOf(e) === 'ENOENT') return null;
    throw e;
  });
  if (!st) return null;
  if (st.nlink > 1) return { id: `${st.dev}:${st.ino}`, expiresMs: st.mtimeMs + ttlMs };
  const l = await readLock(path, ttlMs);
  // an unreadable lock (being written, or damaged) is told apart by its inode
  return l ? { id: l.token === '' ? `${st.dev}:${st.ino}` : l.token, expiresMs: l.expiresMs } : null;
}
