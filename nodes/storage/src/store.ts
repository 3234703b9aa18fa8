import { randomInt } from 'node:crypto';
import { mkdir, readdir, realpath, rm, statfs } from 'node:fs/promises';
import { isAbsolute, join, relative, resolve, sep } from 'node:path';
import { LruMap } from '@dsm/common/lru';
import { isJournalEntry } from './commit-journal.ts';
import { SpaceReader } from './fs-util.ts';

/** Folder (inside each store) for this process's upload temp files: `.tmp/<hostname>-<port>`. */
export const TMP_DIR = '.tmp';
/**
 * Local file systems (statfs f_type): ext4/ext3/ext2, xfs, btrfs, tmpfs, overlayfs, zfs, f2fs.
 * Only on these does a storage keep handles open between requests (kept files and folders) and
 * make upload claims as hard links (Stores.local). On a GlusterFS (FUSE) volume, both went
 * wrong in the HA lab: a handle still open when the host's network was cut made the kill of
 * its storage wait for FUSE (up to network.ping-timeout), and a claim name left by a storage
 * killed mid-upload while a brick was away was not healed to that brick (faults (c)-(e)).
 */
const LOCAL_FS_TYPES: ReadonlySet<number> = new Set([
  0xef53, 0x58465342, 0x9123683e, 0x01021994, 0x794c7630, 0x2fc12fc1, 0xf2f52010,
]);

/** Folder (inside each store) for resumable uploads, shared by the group: `.partial/<fileid>`. */
export const PARTIAL_DIR = '.partial';

/** `path` is `root` itself or below it (both absolute and normalised). */
export function isInside(root: string, path: string): boolean {
  const r = relative(root, path);
  return r === '' || (r !== '..' && !r.startsWith(`..${sep}`) && !isAbsolute(r));
}

const safeName = (s: string) => s.replace(/[^A-Za-z0-9._-]/g, '_');

/**
 * The store folders of this node (absolute). Every member of a group has the same list and
 * shares the folders, so paths recorded by one member are valid on all of them.
 */
export class Stores {
  readonly paths: readonly string[];
  readonly #tmpName: string;
  readonly #base: string;
  /** resolveRecorded's recent answers (bounded). */
  readonly #resolved = new LruMap<string, string | null>(4096);
  readonly #space: SpaceReader[];
  #real: string[] = [];
  #local = false;

  /** `tmpName` identifies this process among the group members (`<hostname>-<port>`). */
  constructor(paths: readonly string[], tmpName: string, base = process.cwd()) {
    this.paths = paths.map((p) => resolve(base, p));
    this.#base = base;
    this.#tmpName = safeName(tmpName);
    this.#space = this.paths.map((p) => new SpaceReader(p));
  }

  /** The free-space reader of store `i` (shared by every upload of this process). */
  space(i: number): SpaceReader {
    return this.#space[i] as SpaceReader;
  }

  /**
   * Creates the folders and empties this process's own temp folder: temp files of a previous
   * run (killed mid-upload) never outlive a restart, except commit journal entries, which
   * recoverJournal resolves once the database answers. Other members' temp folders are not
   * touched.
   */
  async init(): Promise<void> {
    for (let i = 0; i < this.paths.length; i++) {
      await mkdir(join(this.paths[i] as string, PARTIAL_DIR), { recursive: true });
      const tmp = this.tmpDir(i);
      await mkdir(tmp, { recursive: true });
      for (const name of await readdir(tmp)) {
        // an upload linked to its final path whose row may be missing: recoverJournal decides
        const claim = (fileId: string) => this.claimPath(fileId);
        if (await isJournalEntry(join(tmp, name), name, this.paths[i] as string, claim)) continue;
        await rm(join(tmp, name), { recursive: true, force: true });
      }
    }
    this.#real = await Promise.all(this.paths.map((p) => realpath(p)));
    const types = await Promise.all(
      this.paths.map((p) =>
        statfs(join(p, PARTIAL_DIR)).then(
          (f) => Number(f.type),
          () => -1,
        ),
      ),
    );
    this.#local = types.every((t) => LOCAL_FS_TYPES.has(t));
  }

  /**
   * Every store is on a local file system (LOCAL_FS_TYPES): handles may be kept open between
   * requests (OpenFiles, KnownDirs.sync) and upload claims may be hard links (lock.ts LinkClaim).
   */
  get local(): boolean {
    return this.#local;
  }

  get size(): number {
    return this.paths.length;
  }

  path(i: number): string {
    return this.paths[i] as string;
  }

  /** A store index from a cryptographic random source (the seed reseeded rand() each second). */
  pick(): number {
    return this.paths.length === 1 ? 0 : randomInt(this.paths.length);
  }

  tmpDir(i: number): string {
    return join(this.path(i), TMP_DIR, this.#tmpName);
  }

  partialPath(i: number, fileId: string): string {
    return join(this.path(i), PARTIAL_DIR, fileId);
  }

  /** Where an upload claims its file id in a shared store (file-ops.ts, lock.ts LinkClaim). */
  claimPath(fileId: string): string {
    return `${this.partialPath(0, fileId)}.upload.lock`;
  }

  /** Index of the store holding `absPath` (lexically), or -1. */
  indexOf(absPath: string): number {
    return this.paths.findIndex((root) => isInside(root, absPath) && absPath !== root);
  }

  /**
   * A recorded `file_path` as an absolute path inside one of the stores, or null when it points
   * anywhere else (never read or delete outside the data root). Relative paths (seed rows)
   * resolve against the config folder.
   */
  resolveRecorded(filePath: string | null | undefined): string | null {
    if (!filePath || filePath.includes('\0')) return null;
    // a pure function of the path (the base and the stores are fixed): the answers of recent
    // paths are kept, since a download resolved its file's path each time (10 % of what the
    // storage allocated per small download went to path.resolve and the inside check)
    const known = this.#resolved.get(filePath);
    if (known !== undefined) return known;
    const abs = resolve(this.#base, filePath);
    const answer = this.indexOf(abs) >= 0 ? abs : null;
    this.#resolved.set(filePath, answer);
    return answer;
  }

  /** Whether a real (symlink-free) path lies inside one of the stores. */
  isRealInside(real: string): boolean {
    return this.#real.some((root) => isInside(root, real) && real !== root);
  }
}
