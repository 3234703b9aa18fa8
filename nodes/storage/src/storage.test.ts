import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { newFileId, Pool, ping, StorageClient, type UploadSource } from '@dsm/client';
import { nodeTransport } from '@dsm/client/node';
import { createLogger, parseConfig } from '@dsm/common';
import type { DbHandle } from '@dsm/db';
import {
  type Address,
  type FileIds as ClientIds,
  Command,
  decodeErrorReply,
  Errno,
  encodeFrame,
  encodeStreamHeader,
  encodeUploadAppendPrefix,
  encodeUploadPrefix,
  IDS_LENGTH,
  Status,
} from '@dsm/packets';
import {
  type Backend,
  collect,
  loadSeedVectors,
  mariadbBackend,
  RawConn,
  randomTag,
  type SeedVector,
  sqliteBackend,
  until,
} from '@dsm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configSchema } from './config.ts';
import { fileTableFor } from './seed-rules.ts';
import { type StorageNode, startStorage } from './storage.ts';
import { PARTIAL_DIR, TMP_DIR } from './store.ts';
import { closeSuite, errorReplyOf, idStub, openChecks, openScratch } from './test-support.ts';

const log = createLogger('storage-test');

// ---------------------------------------------------------------------------------------------
// Seed vectors: every frame exchanged with the seed storage, in capture order.
// ---------------------------------------------------------------------------------------------
const VECTORS = loadSeedVectors();

interface Exchange {
  request: SeedVector;
  replies: SeedVector[];
}

/** Storage request vectors, each with the reply frame(s) the seed sent on that connection. */
function storageExchanges(): Exchange[] {
  const out: Exchange[] = [];
  for (const v of VECTORS) {
    if (v.server !== 'storage') continue;
    if (v.direction === 'request') out.push({ request: v, replies: [] });
    else {
      const ex = [...out].reverse().find((e) => e.request.connection === v.connection);
      if (!ex) throw new Error(`reply ${v.name} has no request`);
      ex.replies.push(v);
    }
  }
  return out;
}

/** The errno each seed error reply becomes (the seed always sent −1). */
const EXPECTED_ERRNO: Record<string, number> = {
  download_bad_offset: Errno.RANGE,
  download_bad_size: Errno.RANGE,
  filesize_after_delete: Errno.NOT_FOUND,
  storage_unknown_cmd: Errno.UNKNOWN_COMMAND,
  filesize_body10: Errno.BAD_LENGTH,
  negative_len: Errno.BAD_LENGTH,
  upload_bad_size: Errno.BAD_LENGTH,
  filesize_unknown: Errno.NOT_FOUND,
  upload_duplicate: Errno.EXISTS,
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------
const APP = 'tnvideo';
const USER = 'tnv001';
const idsFor = (fileId: string, userId = USER): ClientIds => ({ appId: APP, userId, fileId });
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

function source(data: Buffer, chunk = 64 * 1024): UploadSource {
  return {
    size: data.length,
    async *open() {
      for (let i = 0; i < data.length; i += chunk) yield data.subarray(i, i + chunk);
    },
  };
}

async function* chunks(data: Buffer): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < data.length; i += 64 * 1024) yield data.subarray(i, i + 64 * 1024);
}

/** Regular files under the stores, outside the temp and partial folders. */
async function storedFiles(roots: readonly string[]): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string) => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      if (e.name === TMP_DIR || e.name === PARTIAL_DIR) continue;
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else out.push(p);
    }
  };
  for (const r of roots) await walk(r);
  return out.sort();
}

async function tmpFiles(node: StorageNode): Promise<string[]> {
  const out: string[] = [];
  for (const root of node.storePaths) {
    const d = join(root, TMP_DIR, `${hostOf(node)}-${node.advertisePort}`);
    if (existsSync(d)) out.push(...(await readdir(d)).map((n) => join(d, n)));
  }
  return out;
}
/** A source that sends the first half of `data`, then waits for `release()` before the rest. */
function stalledSource(data: Buffer): { slow: UploadSource; half: Promise<void>; release: () => void } {
  let release!: () => void;
  const held = new Promise<void>((r) => {
    release = r;
  });
  let halfSent!: () => void;
  const half = new Promise<void>((r) => {
    halfSent = r;
  });
  const mid = Math.floor(data.length / 2);
  const slow: UploadSource = {
    size: data.length,
    async *open() {
      yield data.subarray(0, mid);
      halfSent();
      await held;
      yield data.subarray(mid);
    },
  };
  return { slow, half, release };
}
const hostNames = new WeakMap<StorageNode, string>();
const hostOf = (n: StorageNode) => hostNames.get(n) ?? '';

const addr = (n: StorageNode): Address => ({ host: '127.0.0.1', port: n.port });

// ---------------------------------------------------------------------------------------------
// The suite, on both backends.
// ---------------------------------------------------------------------------------------------
const BACKENDS: (() => Backend)[] = [sqliteBackend, mariadbBackend];

describe.each(BACKENDS.map((f) => [f().name, f] as const))('storage node on %s', (_name, makeBackend) => {
  let dir = '';
  let backend: Backend;
  let dbUrl = '';
  let a: StorageNode;
  let b: StorageNode;
  let dbh: DbHandle;
  let pool: Pool;
  let sc: StorageClient;
  const ids = idStub();
  const stores = () => a.storePaths;

  const start = async (hostname: string, extra: Record<string, unknown> = {}) => {
    const config = parseConfig(
      configSchema,
      {
        listen: '127.0.0.1:0',
        hostname,
        storePaths: ['store1', 'store2'],
        trackers: [],
        database: dbUrl,
        cache: backend.cache,
        ...extra,
      },
      dir,
    );
    const n = await startStorage(config, { log, idSource: ids.source, cachePrefix: backend.cachePrefix });
    hostNames.set(n, hostname);
    return n;
  };

  beforeAll(async () => {
    ({ dir, backend, dbUrl } = await openScratch(makeBackend, 'dsm-storage-'));
    a = await start('store-a');
    b = await start('store-b');
    ({ dbh, pool, sc } = openChecks(dbUrl));
  });

  afterAll(() => closeSuite([pool, a, b, dbh], backend, dir));

  it('replays every storage vector of the seed capture in order (same replies; one duplicate error)', async () => {
    const exchanges = storageExchanges();
    expect(exchanges.map((e) => e.request.name.split('.')[0])).toEqual([
      'upload',
      'filesize',
      'download_whole',
      'download_range',
      'download_at_end',
      'download_bad_offset',
      'download_bad_size',
      'delete',
      'filesize_after_delete',
      'storage_unknown_cmd',
      'filesize_body10',
      'negative_len',
      'upload_bad_size',
      'filesize_unknown',
      'upload_small',
      'upload_duplicate',
      'delete_small',
    ]);
    for (const ex of exchanges) {
      const name = ex.request.name.split('.')[0] as string;
      const c = await RawConn.open(a.port);
      try {
        await c.write(Buffer.from(ex.request.frame_hex, 'hex'));
        const want = ex.replies[0] as SeedVector;
        const got = await c.readFrame();
        expect(got, name).not.toBeNull();
        if (!got) continue;
        expect(got.header.command, name).toBe(want.command);
        expect(got.header.status, name).toBe(want.status);
        if (want.status === Status.OK) {
          // Success replies carry no variable parts: byte-identical (download data included).
          expect(got.frame.toString('hex'), name).toBe(want.frame_hex);
          continue;
        }
        const text = String(want.fields.text).replace(/^\[vm\] /, '[store-a] ');
        const err = decodeErrorReply(got.body);
        expect(err.message, name).toBe(text);
        expect(err.errno, name).toBe(EXPECTED_ERRNO[name]);
        expect(got.body.length, name).toBe(2 + Buffer.byteLength(text) + 1);
        expect(got.body[got.body.length - 1], name).toBe(0);
        // One error frame (the seed sent two for the duplicate), then the server closes.
        const end = await c.waitClosed();
        expect(end, name).toEqual({ closed: true, extra: 0 });
      } finally {
        c.close();
      }
    }
    // Both uploaded files were deleted again, rows and files.
    expect(await storedFiles(stores())).toEqual([]);
    for (const t of ['t_file_01', 't_file_02', 't_file_03'] as const) {
      expect(await dbh.db.selectFrom(t).select('id').execute()).toEqual([]);
    }
  });

  it('lets only one member at a time receive a file id: a retry elsewhere gets BUSY, one copy is stored', async () => {
    const fileId = newFileId();
    const data = randomBytes(300_000);
    // member a gets half the body, then the sender stalls (a slow client or a slow member)
    const { slow, half, release } = stalledSource(data);
    const first = sc.uploadExt(addr(a), idsFor(fileId), '', slow);
    await half;
    const claimFile = join(stores()[0] as string, '.partial', `${fileId}.upload.lock`);
    await until(async () => existsSync(claimFile), 5000, 20, 'the upload claim on a');
    const busy = await errorReplyOf(sc.uploadExt(addr(b), idsFor(fileId), '', source(data)));
    expect(busy.errno).toBe(Errno.BUSY);
    expect(busy.message).toContain('Upload Busy');
    release();
    const st = await first;
    expect(Buffer.from(st.sha256).toString('hex')).toBe(sha(data));
    // the claim is gone with the upload: the same id now meets the stored file, not BUSY
    const again = await errorReplyOf(sc.uploadExt(addr(b), idsFor(fileId), '', source(data)));
    expect(again.errno).toBe(Errno.EXISTS);
    expect(existsSync(claimFile)).toBe(false);
  });

  it('an upload whose claim was taken over while it stalled does not commit (BUSY, nothing stored)', async () => {
    const fileId = newFileId();
    const data = randomBytes(300_000);
    const { slow, half, release } = stalledSource(data);
    const first = errorReplyOf(sc.uploadExt(addr(a), idsFor(fileId), '', slow));
    await half;
    const claimFile = join(stores()[0] as string, '.partial', `${fileId}.upload.lock`);
    await until(async () => existsSync(claimFile), 5000, 20, 'the upload claim on a');
    // what another member does once the claim expired: moves it aside (never writes into it: a
    // claim may be the upload's own temp file, lock.ts LinkClaim), removes it, puts its own there
    const aside = `${claimFile}.stale-test`;
    renameSync(claimFile, aside);
    rmSync(aside);
    writeFileSync(claimFile, JSON.stringify({ token: 'thief', owner: 'b', expiresMs: Date.now() + 60_000 }));
    release();
    const e = await first;
    expect(e.errno).toBe(Errno.BUSY);
    expect(e.message).toContain('claim taken over');
    const table = fileTableFor('tnv001');
    expect(await dbh.db.selectFrom(table).selectAll().where('id', '=', fileId).execute()).toEqual([]);
    expect(await tmpFiles(a)).toEqual([]);
    expect(JSON.parse(readFileSync(claimFile, 'utf8')).token).toBe('thief'); // not ours to remove
    rmSync(claimFile);
  });

  it('stores at the seed path scheme (folders created) and records size, sha-256, type, mtime', async () => {
    const fileId = newFileId();
    const data = Buffer.concat([Buffer.from([0, 0, 0, 0x18]), Buffer.from('ftypisom'), randomBytes(70_000)]);
    const before = Date.now();
    const st = await sc.uploadExt(addr(a), idsFor(fileId), '', source(data));
    expect(st.size).toBe(data.length);
    expect(Buffer.from(st.sha256).toString('hex')).toBe(sha(data));
    expect(st.contentType).toBe('video/mp4');
    expect(st.mtimeMs).toBeGreaterThanOrEqual(before);
    const row = await dbh.db
      .selectFrom(fileTableFor(USER))
      .selectAll()
      .where('id', '=', fileId)
      .executeTakeFirstOrThrow();
    expect(row).toMatchObject({
      appid: APP,
      userid: USER,
      status: 0,
      file_size: data.length,
      sha256: sha(data),
      content_type: 'video/mp4',
      mtime_ms: st.mtimeMs,
    });
    const path = row.file_path as string;
    const m = /^(.*)\/([0-9A-F]{3})\/([0-9A-F]{3})\/([0-9A-F]{3})\/([0-9A-F]+)_([0-9A-F]{3})$/.exec(path);
    expect(m, path).not.toBeNull();
    expect(stores()).toContain(m?.[1]);
    const id = Number.parseInt(`${m?.[2]}`, 16) * 512 ** 3 + Number.parseInt(`${m?.[3]}`, 16) * 512 ** 2;
    const id2 = id + Number.parseInt(`${m?.[4]}`, 16) * 512 + Number.parseInt(`${m?.[6]}`, 16);
    expect(id2).toBeGreaterThanOrEqual(114_700);
    expect(Math.abs(Number.parseInt(`${m?.[5]}`, 16) - before / 1000)).toBeLessThan(60);
    expect(readFileSync(path).equals(data)).toBe(true);
    expect(statSync(path).mode & 0o777).toBe(0o644);
    // The id key is <group>:<store index>.
    expect([...ids.keys.keys()].every((k) => /^group001:[01]$/.test(k))).toBe(true);
    // An explicit content type is kept.
    const st2 = await sc.uploadExt(addr(a), idsFor(newFileId()), 'video/webm', source(data));
    expect(st2.contentType).toBe('video/webm');
  });

  it('two storages of a group share folders and database: upload via A, read/stat/delete via B', async () => {
    const fileId = newFileId();
    const data = Buffer.concat([Buffer.from('hello '), randomBytes(300_000)]);
    await sc.upload(addr(a), idsFor(fileId, 'user1'), source(data));
    expect(await sc.size(addr(b), idsFor(fileId, 'user1'))).toBe(data.length);
    expect(await sc.size(addr(a), idsFor(fileId, 'user1'))).toBe(data.length); // now cached on A
    const d = await sc.download(addr(b), { ...idsFor(fileId, 'user1'), offset: 0, size: 0 });
    expect(d.length).toBe(data.length);
    expect((await collect(d.stream)).equals(data)).toBe(true);
    const r = await sc.download(addr(b), { ...idsFor(fileId, 'user1'), offset: 1000, size: 5000 });
    expect((await collect(r.stream)).equals(data.subarray(1000, 6000))).toBe(true);
    const st = await sc.stat(addr(b), idsFor(fileId, 'user1'));
    expect(Buffer.from(st.sha256).toString('hex')).toBe(sha(data));
    expect(st.contentType).toBe('application/octet-stream');
    expect(st.size).toBe(data.length);
    // Another user's table does not know this id.
    expect((await errorReplyOf(sc.size(addr(b), idsFor(fileId, 'tnv003')))).errno).toBe(Errno.NOT_FOUND);
    await sc.delete(addr(b), idsFor(fileId, 'user1'));
    // A had it cached: it notices the file is gone and asks the database.
    const e = await errorReplyOf(sc.size(addr(a), idsFor(fileId, 'user1')));
    expect(e.errno).toBe(Errno.NOT_FOUND);
    expect(e.message).toBe(`[store-a] Read Database Fail, Fileid: ${fileId}`);
    expect(
      (await errorReplyOf(sc.download(addr(a), { ...idsFor(fileId, 'user1'), offset: 0, size: 0 }))).errno,
    ).toBe(Errno.NOT_FOUND);
    expect((await errorReplyOf(sc.delete(addr(b), idsFor(fileId, 'user1')))).errno).toBe(Errno.NOT_FOUND);
  });

  it('a delete interrupted after the file went (row left) serves nothing and is finished by a retry', async () => {
    const fileId = newFileId();
    const data = randomBytes(50_000);
    await sc.upload(addr(a), idsFor(fileId, 'user1'), source(data));
    expect(await sc.size(addr(b), idsFor(fileId, 'user1'))).toBe(data.length); // cached on B
    const table = fileTableFor('user1');
    const row = await dbh.db.selectFrom(table).selectAll().where('id', '=', fileId).executeTakeFirstOrThrow();
    const path = row.file_path as string;
    // the file goes before the row: a file that cannot be removed keeps the row too
    rmSync(path);
    mkdirSync(join(path, 'x'), { recursive: true }); // unlink → EISDIR
    expect((await errorReplyOf(sc.delete(addr(a), idsFor(fileId, 'user1')))).errno).toBe(Errno.IO_ERROR);
    expect(await dbh.db.selectFrom(table).selectAll().where('id', '=', fileId).execute()).toHaveLength(1);
    // the state a storage killed in the middle of a delete leaves: no file, the row still there
    rmSync(path, { recursive: true });
    const e = await errorReplyOf(sc.download(addr(b), { ...idsFor(fileId, 'user1'), offset: 0, size: 0 }));
    expect(e.errno).toBe(Errno.IO_ERROR);
    expect(e.message).toContain('ENOENT');
    await sc.delete(addr(b), idsFor(fileId, 'user1')); // the client's retry
    expect(await dbh.db.selectFrom(table).selectAll().where('id', '=', fileId).execute()).toEqual([]);
    expect((await errorReplyOf(sc.size(addr(a), idsFor(fileId, 'user1')))).errno).toBe(Errno.NOT_FOUND);
  });

  it('stat of a seed-era row computes and records the sha-256 and sniffs the type; paths outside the stores are refused', async () => {
    const fileId = newFileId();
    const data = Buffer.concat([
      Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
      randomBytes(5000),
    ]);
    const folder = join(stores()[0] as string, '000', '000', '001');
    mkdirSync(folder, { recursive: true });
    const path = join(folder, '65F1560C_115');
    writeFileSync(path, data);
    const table = fileTableFor('tnv002');
    await dbh.db
      .insertInto(table)
      .values({
        id: fileId,
        appid: APP,
        userid: 'tnv002',
        status: 0,
        file_path: path,
        file_size: data.length,
      })
      .execute();
    const st = await sc.stat(addr(b), idsFor(fileId, 'tnv002'));
    expect(Buffer.from(st.sha256).toString('hex')).toBe(sha(data));
    expect(st.contentType).toBe('image/png');
    expect(st.mtimeMs).toBeGreaterThan(0);
    const row = await dbh.db.selectFrom(table).selectAll().where('id', '=', fileId).executeTakeFirstOrThrow();
    expect(row.sha256).toBe(sha(data));
    expect(row.content_type).toBe('image/png');
    await sc.delete(addr(a), idsFor(fileId, 'tnv002'));
    expect(existsSync(path)).toBe(false);

    for (const bad of ['/etc/passwd', '../../../../../../etc/passwd', `${stores()[0]}/../outside`]) {
      const id = newFileId();
      await dbh.db
        .insertInto(table)
        .values({ id, appid: APP, userid: 'tnv002', status: 0, file_path: bad, file_size: 10 })
        .execute();
      const e = await errorReplyOf(sc.download(addr(a), { ...idsFor(id, 'tnv002'), offset: 0, size: 0 }));
      expect(e.errno).toBe(Errno.INTERNAL);
      expect(e.message).toContain('Invalid File Path');
      expect((await errorReplyOf(sc.stat(addr(a), idsFor(id, 'tnv002')))).errno).toBe(Errno.INTERNAL);
      await sc.delete(addr(a), idsFor(id, 'tnv002')); // the row goes; nothing outside is touched
    }
    expect(existsSync('/etc/passwd')).toBe(true);

    // a symlink inside a store that leads outside it: refused on the file actually opened
    const link = join(folder, 'LINK_OUT');
    symlinkSync('/etc/passwd', link);
    const linked = newFileId();
    await dbh.db
      .insertInto(table)
      .values({ id: linked, appid: APP, userid: 'tnv002', status: 0, file_path: link, file_size: 10 })
      .execute();
    const e = await errorReplyOf(sc.download(addr(a), { ...idsFor(linked, 'tnv002'), offset: 0, size: 0 }));
    expect(e.errno).toBe(Errno.INTERNAL);
    expect(e.message).toContain('Invalid File Path');
    rmSync(link);
  });

  it('refuses bad file ids and app ids with an error reply and keeps serving', async () => {
    for (const fileId of ['../x', '', 'a/b', '..']) {
      const e = await errorReplyOf(sc.size(addr(a), idsFor(fileId)));
      expect(e.errno).toBe(Errno.BAD_FIELD);
      expect(e.message).toBe(`[store-a] Invalid Fileid: ${fileId}`);
      const u = await errorReplyOf(sc.upload(addr(a), idsFor(fileId), source(Buffer.from('x'))));
      expect(u.errno).toBe(Errno.BAD_FIELD);
    }
    const app = await errorReplyOf(
      sc.upload(addr(a), { appId: 'tn-video', userId: USER, fileId: newFileId() }, source(Buffer.from('x'))),
    );
    expect(app.message).toBe('[store-a] Invalid APPID: tn-video');
    // A file id filling its whole field (no NUL; a 200-character id cannot fit): refused.
    const body = Buffer.alloc(IDS_LENGTH);
    body.write(APP, 0);
    body.write(USER, 16);
    body.fill('a'.charCodeAt(0), 272, 400);
    for (const cmd of [Command.STORAGE_SIZE, Command.STORAGE_STAT, Command.STORAGE_DELETE]) {
      const c = await RawConn.open(a.port);
      await c.write(encodeFrame(cmd, body));
      const f = await c.readFrame();
      expect(f?.header.status).toBe(Status.ERROR);
      expect(decodeErrorReply(f?.body as Buffer).errno).toBe(Errno.BAD_FIELD);
      c.close();
    }
    await ping(pool, addr(a), Command.STORAGE_REPLY);
    const fileId = newFileId();
    await sc.upload(addr(a), idsFor(fileId), source(Buffer.from('still serving')));
    expect(await sc.size(addr(a), idsFor(fileId))).toBe(13);
  });

  it('a connection dropped mid-upload leaves no row, no final file and no temp file', async () => {
    const filesBefore = await storedFiles(stores());
    const fileId = newFileId();
    const c = await RawConn.open(a.port);
    const size = 4_000_000;
    await c.write(encodeStreamHeader(Command.STORAGE_UPLOAD, 408 + size));
    await c.write(encodeUploadPrefix({ ...idsFor(fileId), size }));
    await c.write(randomBytes(1_500_000));
    await until(async () => (await tmpFiles(a)).length > 0, 5000, 20, 'a temp file');
    c.close();
    await until(async () => (await tmpFiles(a)).length === 0, 5000, 20, 'the temp file to go');
    expect(await storedFiles(stores())).toEqual(filesBefore);
    expect((await errorReplyOf(sc.size(addr(a), idsFor(fileId)))).errno).toBe(Errno.NOT_FOUND);
    // The id can be used again.
    await sc.upload(addr(a), idsFor(fileId), source(Buffer.from('again')));
  });

  it('a duplicate upload is refused before its body is read (one error frame)', async () => {
    const fileId = newFileId();
    await sc.upload(addr(a), idsFor(fileId), source(Buffer.from('first')));
    const filesBefore = await storedFiles(stores());
    const e = await errorReplyOf(sc.upload(addr(b), idsFor(fileId), source(randomBytes(2_000_000))));
    expect(e.errno).toBe(Errno.EXISTS);
    expect(e.message).toBe(`[store-b] INSERT Database Fail, Fileid: ${fileId}`);
    expect(await storedFiles(stores())).toEqual(filesBefore);
    expect(await tmpFiles(b)).toEqual([]);
  });

  it('resumable upload: create, 3 appends over both storages, offset, commit; byte-equal', async () => {
    const fileId = newFileId();
    const ids = idsFor(fileId);
    const parts = [randomBytes(100_000), randomBytes(250_000), randomBytes(1234)];
    const data = Buffer.concat(parts);
    expect(await sc.uploadCreate(addr(a), ids, data.length, 'audio/ogg')).toBe(0);
    expect((await errorReplyOf(sc.uploadCreate(addr(b), ids, data.length, ''))).errno).toBe(Errno.EXISTS);
    let offset = 0;
    const via = [a, b, a];
    for (let i = 0; i < 3; i++) {
      const p = parts[i] as Buffer;
      const node = via[i] as StorageNode;
      const next = await sc.uploadAppend(addr(node), ids, offset, p.length, chunks(p));
      expect(next).toBe(offset + p.length);
      offset = next;
      if (i === 0) {
        const e = await errorReplyOf(sc.uploadAppend(addr(b), ids, 5, 3, chunks(Buffer.from('abc'))));
        expect(e.errno).toBe(Errno.OFFSET_MISMATCH);
        expect(e.message).toBe(`[store-b] Upload Offset Mismatch: 5 != ${p.length}`);
      }
    }
    expect(await sc.uploadOffset(addr(b), ids)).toEqual({ offset: data.length, totalSize: data.length });
    const st = await sc.uploadCommit(addr(b), ids);
    expect(st.size).toBe(data.length);
    expect(Buffer.from(st.sha256).toString('hex')).toBe(sha(data));
    expect(st.contentType).toBe('audio/ogg');
    const d = await sc.download(addr(a), { ...ids, offset: 0, size: 0 });
    expect((await collect(d.stream)).equals(data)).toBe(true);
    expect(await dbh.db.selectFrom('t_upload').select('id').where('id', '=', fileId).execute()).toEqual([]);
    for (const root of stores()) expect(existsSync(join(root, PARTIAL_DIR, fileId))).toBe(false);
    // The file exists now: neither a new resumable upload nor a plain one may take the id.
    expect((await errorReplyOf(sc.uploadCreate(addr(a), ids, 1, ''))).errno).toBe(Errno.EXISTS);
    expect((await errorReplyOf(sc.uploadOffset(addr(a), ids))).errno).toBe(Errno.NOT_FOUND);
  });

  it('resumable upload: a body cut midway keeps what arrived; commit checks the total; abort', async () => {
    const fileId = newFileId();
    const ids = idsFor(fileId);
    const data = randomBytes(400_000);
    await sc.uploadCreate(addr(a), ids, data.length, '');
    const c = await RawConn.open(a.port);
    await c.write(encodeStreamHeader(Command.STORAGE_UPLOAD_APPEND, 416 + data.length));
    await c.write(encodeUploadAppendPrefix({ ...ids, offset: 0, length: data.length }));
    await c.write(data.subarray(0, 150_000));
    c.close();
    await until(
      async () => (await sc.uploadOffset(addr(b), ids)).offset === 150_000,
      5000,
      20,
      'bytes on disk',
    );
    // The lock is released once the server notices the cut.
    await until(
      async () => {
        try {
          return (await sc.uploadAppend(addr(b), ids, 150_000, 0, chunks(Buffer.alloc(0)))) === 150_000;
        } catch {
          return false;
        }
      },
      5000,
      20,
      'the lock to be released',
    );
    expect((await errorReplyOf(sc.uploadCommit(addr(a), ids))).errno).toBe(Errno.OFFSET_MISMATCH);
    await sc.uploadAppend(addr(b), ids, 150_000, 250_000, chunks(data.subarray(150_000)));
    const st = await sc.uploadCommit(addr(a), ids);
    expect(Buffer.from(st.sha256).toString('hex')).toBe(sha(data));
    expect(st.contentType).toBe('application/octet-stream');
    const d = await sc.download(addr(b), { ...ids, offset: 0, size: 0 });
    expect((await collect(d.stream)).equals(data)).toBe(true);

    // Abort drops the partial file and the row.
    const other = idsFor(newFileId());
    await sc.uploadCreate(addr(a), other, -1, '');
    await sc.uploadAppend(addr(a), other, 0, 10, chunks(Buffer.from('0123456789')));
    expect(await sc.uploadOffset(addr(a), other)).toEqual({ offset: 10, totalSize: -1 });
    await sc.uploadAbort(addr(b), other);
    expect((await errorReplyOf(sc.uploadOffset(addr(a), other))).errno).toBe(Errno.NOT_FOUND);
    for (const root of stores()) expect(existsSync(join(root, PARTIAL_DIR, other.fileId))).toBe(false);
  });

  it('resumable upload: concurrent appends on two storages, one wins; a held lock gives BUSY', async () => {
    const ids = idsFor(newFileId());
    await sc.uploadCreate(addr(a), ids, -1, '');
    const part = randomBytes(2_000_000);
    const results = await Promise.allSettled([
      sc.uploadAppend(addr(a), ids, 0, part.length, chunks(part)),
      sc.uploadAppend(addr(b), ids, 0, part.length, chunks(part)),
    ]);
    const ok = results.filter((r) => r.status === 'fulfilled');
    const failed = results.filter((r) => r.status === 'rejected') as PromiseRejectedResult[];
    expect(ok).toHaveLength(1);
    expect(failed).toHaveLength(1);
    expect([Errno.BUSY, Errno.OFFSET_MISMATCH]).toContain((failed[0] as PromiseRejectedResult).reason.errno);
    expect((await sc.uploadOffset(addr(b), ids)).offset).toBe(part.length);

    // Deterministic: A holds the lock while its body is still arriving; B is refused.
    const c = await RawConn.open(a.port);
    const more = randomBytes(100_000);
    await c.write(encodeStreamHeader(Command.STORAGE_UPLOAD_APPEND, 416 + more.length));
    await c.write(encodeUploadAppendPrefix({ ...ids, offset: part.length, length: more.length }));
    await c.write(more.subarray(0, 10_000));
    const row = await dbh.db
      .selectFrom('t_upload')
      .selectAll()
      .where('id', '=', ids.fileId)
      .executeTakeFirstOrThrow();
    await until(() => existsSync(`${row.temp_path}.lock`), 5000, 20, 'the lock file');
    const e = await errorReplyOf(sc.uploadAppend(addr(b), ids, part.length, 3, chunks(Buffer.from('xyz'))));
    expect(e.errno).toBe(Errno.BUSY);
    expect((await errorReplyOf(sc.uploadCommit(addr(b), ids))).errno).toBe(Errno.BUSY);
    await c.write(more.subarray(10_000));
    const f = await c.readFrame();
    expect(f?.header.status).toBe(Status.OK);
    expect(Number(f?.body.readBigInt64BE(0))).toBe(part.length + more.length);
    c.close();
    const st = await sc.uploadCommit(addr(b), ids);
    expect(Buffer.from(st.sha256).toString('hex')).toBe(sha(Buffer.concat([part, more])));
  });

  it('expired resumable uploads are swept (row, partial file); fresh ones stay', async () => {
    const ids = idsFor(newFileId());
    await sc.uploadCreate(addr(a), ids, -1, '');
    await sc.uploadAppend(addr(a), ids, 0, 5, chunks(Buffer.from('hello')));
    const row = await dbh.db
      .selectFrom('t_upload')
      .selectAll()
      .where('id', '=', ids.fileId)
      .executeTakeFirstOrThrow();
    expect(await b.sweepUploads()).toBe(0);
    expect(existsSync(row.temp_path)).toBe(true);
    expect(await b.sweepUploads(Date.now() + 24 * 3600 * 1000 + 1000)).toBeGreaterThanOrEqual(1);
    expect(existsSync(row.temp_path)).toBe(false);
    expect((await errorReplyOf(sc.uploadOffset(addr(a), ids))).errno).toBe(Errno.NOT_FOUND);
    expect(await dbh.db.selectFrom('t_upload').select('id').execute()).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------------
// Single-backend cases.
// ---------------------------------------------------------------------------------------------
describe('storage node, special situations', () => {
  let dir = '';
  let pool: Pool;
  let sc: StorageClient;
  const nodes: StorageNode[] = [];
  const ids = idStub(0);

  const start = async (raw: Record<string, unknown>) => {
    const config = parseConfig(
      configSchema,
      { listen: '127.0.0.1:0', storePaths: ['s'], trackers: [], hostname: 'special', ...raw },
      dir,
    );
    const n = await startStorage(config, { log, idSource: ids.source });
    nodes.push(n);
    return n;
  };

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'dsm-storage-x-'));
    pool = new Pool({ transport: nodeTransport, ioTimeoutMs: 20_000 });
    sc = new StorageClient(pool);
  });

  afterAll(async () => {
    await pool?.close();
    for (const n of nodes) await n.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('a 64 MiB upload and download stream: the server process stays far below the file size', async () => {
    // The server runs in its own process so its peak RSS (VmHWM) is measured alone. That process
    // collects garbage every 25 ms: V8 lets dead Buffers (every socket chunk is a new one) pile up
    // to ~64 MB before it collects on its own, which would hide whether the file is buffered.
    const child = spawn(
      process.execPath,
      [
        '--expose-gc',
        '--import',
        'tsx',
        fileURLToPath(new URL('./test-child.ts', import.meta.url)),
        JSON.stringify({
          listen: '127.0.0.1:0',
          storePaths: ['big'],
          trackers: [],
          hostname: 'big',
          database: `sqlite:${join(dir, 'big.db')}`,
        }),
        dir,
      ],
      { stdio: ['pipe', 'pipe', 'inherit'] },
    );
    try {
      const port = await new Promise<number>((resolve, reject) => {
        let out = '';
        child.stdout?.on('data', (c: Buffer) => {
          out += c.toString();
          const line = out.split('\n')[0] ?? '';
          if (out.includes('\n')) resolve((JSON.parse(line) as { port: number }).port);
        });
        child.once('exit', (code) => reject(new Error(`storage child exited with ${code}`)));
      });
      const memory = (field: 'VmRSS' | 'VmHWM') => {
        const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(
          readFileSync(`/proc/${child.pid}/status`, 'utf8'),
        );
        return Number(m?.[1]) * 1024;
      };
      const n = { host: '127.0.0.1', port };
      await ping(pool, n, Command.STORAGE_REPLY);
      const base = memory('VmRSS');
      const size = 64 * 1024 * 1024;
      const chunk = 256 * 1024;
      const hash = createHash('sha256');
      const src: UploadSource = {
        size,
        async *open() {
          for (let i = 0; i < size / chunk; i++) {
            const b = Buffer.alloc(chunk, i & 0xff);
            b.writeUInt32BE(i, 0);
            hash.update(b);
            yield b;
          }
        },
      };
      const fileId = newFileId();
      await sc.upload(n, idsFor(fileId), src);
      const st = await sc.stat(n, idsFor(fileId));
      expect(st.size).toBe(size);
      expect(Buffer.from(st.sha256).toString('hex')).toBe(hash.digest('hex'));
      const d = await sc.download(n, { ...idsFor(fileId), offset: 0, size: 0 });
      const back = createHash('sha256');
      let got = 0;
      for await (const c of d.stream) {
        back.update(c);
        got += c.length;
      }
      expect(got).toBe(size);
      expect(back.digest('hex')).toBe(Buffer.from(st.sha256).toString('hex'));
      const grew = memory('VmHWM') - base;
      log.info({ baseMiB: base / 2 ** 20, grewMiB: grew / 2 ** 20 }, 'storage RSS growth, 64 MiB up + down');
      expect(grew).toBeLessThan(size / 3);
    } finally {
      child.stdin?.end();
      const kill = setTimeout(() => child.kill('SIGKILL'), 5000);
      await new Promise((r) => {
        if (child.exitCode !== null || child.signalCode !== null) r(null);
        else child.once('exit', r);
      });
      clearTimeout(kill);
    }
  });

  it('database down: errno DB_UNAVAILABLE replies, no crash, still serving', async () => {
    const t0 = Date.now();
    const n = await start({ database: 'mysql://root@127.0.0.1:1/x', hostname: 'dbdown' });
    expect(Date.now() - t0).toBeLessThan(5000);
    const ids = idsFor(newFileId());
    const calls: [string, () => Promise<unknown>][] = [
      ['size', () => sc.size(addr(n), ids)],
      ['download', () => sc.download(addr(n), { ...ids, offset: 0, size: 0 })],
      ['delete', () => sc.delete(addr(n), ids)],
      ['stat', () => sc.stat(addr(n), ids)],
      ['upload', () => sc.upload(addr(n), ids, source(Buffer.from('x')))],
      ['create', () => sc.uploadCreate(addr(n), ids, 10, '')],
      ['offset', () => sc.uploadOffset(addr(n), ids)],
    ];
    for (const [what, call] of calls) {
      const e = await errorReplyOf(call());
      expect(e.errno, what).toBe(Errno.DB_UNAVAILABLE);
      expect(e.message, what).toMatch(/^\[dbdown\] /);
    }
    await ping(pool, addr(n), Command.STORAGE_REPLY);
  });

  it('Redis down: metadata from the database; own temp folder emptied at start-up, others kept', async () => {
    const store = join(dir, 'kv');
    const own = join(store, TMP_DIR, 'kvdown-45678');
    const other = join(store, TMP_DIR, 'elsewhere-1');
    mkdirSync(own, { recursive: true });
    mkdirSync(other, { recursive: true });
    writeFileSync(join(own, 'left-by-kill-9'), 'x');
    writeFileSync(join(other, 'in-progress'), 'y');
    const n = await start({
      database: `sqlite:${join(dir, 'kv.db')}`,
      cache: 'redis://127.0.0.1:1/0',
      hostname: 'kvdown',
      advertisePort: 45678,
      storePaths: [store],
    });
    expect(n.advertisePort).toBe(45678);
    expect(existsSync(join(own, 'left-by-kill-9'))).toBe(false);
    expect(existsSync(join(other, 'in-progress'))).toBe(true);
    const ids = idsFor(`kv-${randomTag()}`);
    const data = randomBytes(10_000);
    await sc.upload(addr(n), ids, source(data));
    expect(await sc.size(addr(n), ids)).toBe(data.length);
    const d = await sc.download(addr(n), { ...ids, offset: 10, size: 0 });
    expect((await collect(d.stream)).equals(data.subarray(10))).toBe(true);
    await sc.delete(addr(n), ids);
  });

  it('the id servers down: "Get Filepath Fail..." with errno ID_UNAVAILABLE', async () => {
    const config = parseConfig(
      configSchema,
      {
        listen: '127.0.0.1:0',
        storePaths: ['noid'],
        trackers: [],
        idServers: ['127.0.0.1:1'],
        hostname: 'noid',
        database: `sqlite:${join(dir, 'noid.db')}`,
      },
      dir,
    );
    const n = await startStorage(config, { log });
    nodes.push(n);
    const e = await errorReplyOf(sc.upload(addr(n), idsFor(newFileId()), source(Buffer.from('x'))));
    expect(e.errno).toBe(Errno.ID_UNAVAILABLE);
    expect(e.message).toBe('[noid] Get Filepath Fail...');
  });

  it('refuses an upload that would leave less than reserveBytes free (NO_SPACE)', async () => {
    const n = await start({
      database: `sqlite:${join(dir, 'space.db')}`,
      reserveBytes: 2 ** 52,
      storePaths: ['sp'],
    });
    const e = await errorReplyOf(sc.upload(addr(n), idsFor(newFileId()), source(Buffer.from('x'))));
    expect(e.errno).toBe(Errno.NO_SPACE);
  });
});
