import { randomBytes } from 'node:crypto';
import { newFileId, type StorageClient, type UploadSource } from '@dsm/client';
import { createLogger } from '@dsm/common';
import { createKvStore } from '@dsm/kv';
import { DELETES_MAX, type FileIds } from '@dsm/packets';
import { type Backend, mariadbBackend, sqliteBackend } from '@dsm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MetaStore } from './meta.ts';
import { errorReplyOf, idStub, type MemberPair, startMemberPair } from './test-support.ts';

// The group's delete log (STORAGE_DELETES, 81): every delete made through any member is numbered
// in the shared database, in commit order and without gaps, so a gateway that saw number n and
// reads what follows learns of every delete after n, or learns that it cannot know.

const log = createLogger('delete-log-test');
const BACKENDS: (() => Backend)[] = [sqliteBackend, mariadbBackend];

const source = (data: Buffer): UploadSource => ({
  size: data.length,
  async *open() {
    yield data;
  },
});

describe.each(BACKENDS.map((f) => [f().name, f] as const))('delete log on %s', (_name, makeBackend) => {
  let g: MemberPair;
  let sc: StorageClient;
  const addrA = () => g.addrA();
  const addrB = () => g.addrB();

  beforeAll(async () => {
    g = await startMemberPair(makeBackend, 'dsm-delete-log-', { log, idSource: idStub().source });
    sc = g.sc;
  });

  afterAll(() => g?.close());

  async function stored(userId = 'carol'): Promise<FileIds> {
    const f = { appId: 'tnvideo', userId, fileId: newFileId() };
    await sc.uploadExt(addrA(), f, 'video/mp4', source(randomBytes(1000)));
    return f;
  }

  const plain = (f: FileIds) => ({ appId: f.appId, userId: f.userId, fileId: f.fileId });

  it('names every delete through either member, in order; asks from any point answer the rest', async () => {
    const start = (await sc.deletesSince(addrA(), 0)).latest;
    const files = [await stored(), await stored('dave'), await stored()];
    await sc.delete(addrA(), files[0]!);
    await sc.delete(addrB(), files[1]!);
    await sc.delete(addrA(), files[2]!);
    const all = await sc.deletesSince(addrB(), start);
    expect(all.latest).toBe(start + 3);
    expect(all.deleted).toEqual(files.map(plain));
    expect(await sc.deletesSince(addrA(), start + 2)).toEqual({
      latest: start + 3,
      deleted: [plain(files[2]!)],
    });
    // nothing new, and an asker ahead of the log (a database that went back): no names
    expect(await sc.deletesSince(addrA(), start + 3)).toEqual({ latest: start + 3, deleted: [] });
    expect(await sc.deletesSince(addrA(), start + 50)).toEqual({ latest: start + 3, deleted: [] });
  });

  it('a delete that finds no file of the asker (missing, or another tenant’s) is not logged', async () => {
    const f = await stored('erin');
    const before = (await sc.deletesSince(addrA(), 0)).latest;
    expect((await errorReplyOf(sc.delete(addrA(), { ...f, userId: 'mallory' }))).code).toBe(
      'DSM_ERR_NOT_FOUND',
    );
    expect((await errorReplyOf(sc.delete(addrB(), { ...f, fileId: newFileId() }))).code).toBe(
      'DSM_ERR_NOT_FOUND',
    );
    expect((await sc.deletesSince(addrA(), 0)).latest).toBe(before);
    // and the file is still there for its owner
    expect((await sc.stat(addrB(), f)).size).toBe(1000);
  });

  it('concurrent deletes on both members take distinct, consecutive numbers', async () => {
    const files = await Promise.all(Array.from({ length: 16 }, (_, i) => stored(`u${i % 4}`)));
    const start = (await sc.deletesSince(addrA(), 0)).latest;
    await Promise.all(files.map((f, i) => sc.delete(i % 2 ? addrA() : addrB(), f)));
    const r = await sc.deletesSince(addrA(), start);
    expect(r.latest).toBe(start + 16);
    expect(r.deleted).toHaveLength(16);
    const names = (xs: FileIds[]) => xs.map((x) => `${x.userId}/${x.fileId}`).sort();
    expect(names(r.deleted)).toEqual(names(files));
  });

  it(`more than ${DELETES_MAX} deletes since the asker's number, or entries trimmed: no names, only the number`, async () => {
    const meta = new MetaStore(g.dbh.db, createKvStore('memory:'), 0, log);
    const start = (await sc.deletesSince(addrA(), 0)).latest;
    for (let i = 0; i < DELETES_MAX + 1; i++)
      await meta.logDelete(newFileId(), { appId: 'tnvideo', userId: 'bulk' });
    const over = await sc.deletesSince(addrA(), start);
    expect(over).toEqual({ latest: start + DELETES_MAX + 1, deleted: [] });
    const under = await sc.deletesSince(addrA(), start + 1);
    expect(under.deleted).toHaveLength(DELETES_MAX);
    // the sweeper trims entries older than DELETE_LOG_KEEP_MS; a reader behind them cannot know
    const f = await stored();
    await sc.delete(addrA(), f);
    expect((await sc.deletesSince(addrA(), start + DELETES_MAX + 1)).deleted).toEqual([plain(f)]);
    expect(await meta.trimDeleteLog(Date.now() + 1)).toBeGreaterThanOrEqual(DELETES_MAX + 2);
    expect(await sc.deletesSince(addrA(), start + DELETES_MAX + 1)).toEqual({
      latest: start + DELETES_MAX + 2,
      deleted: [],
    });
    // numbering goes on after a trim
    const h = await stored();
    await sc.delete(addrB(), h);
    expect(await sc.deletesSince(addrA(), start + DELETES_MAX + 2)).toEqual({
      latest: start + DELETES_MAX + 3,
      deleted: [plain(h)],
    });
  });
});
