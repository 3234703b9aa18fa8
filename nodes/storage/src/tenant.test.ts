import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { newFileId, type RemoteError, type StorageClient, type UploadSource } from '@dsm/client';
import { createLogger } from '@dsm/common';
import type { DbHandle } from '@dsm/db';
import { createKvStore } from '@dsm/kv';
import {
  type Address,
  APPID_WIDTH,
  Command,
  decodeErrorReply,
  Errno,
  encodeFrame,
  encodeIds,
  type FileIds,
  USERID_WIDTH,
} from '@dsm/packets';
import { type Backend, collect, mariadbBackend, RawConn, type RawFrame, sqliteBackend } from '@dsm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type FileMeta, MetaStore, ownerOf } from './meta.ts';
import { fileTableFor } from './seed-rules.ts';
import type { StorageNode } from './storage.ts';
import { errorReplyOf, idStub, type MemberPair, startMemberPair } from './test-support.ts';

// Tenant isolation at the protocol: a request names (app, user, file id); the user picks the
// table, and only a row recorded for exactly that app and user is the file. Anyone else naming
// the file id gets what a missing file gets.

const log = createLogger('tenant-test');
const BACKENDS: (() => Backend)[] = [sqliteBackend, mariadbBackend];

const APP = 'tnvideo';
const VICTIM = 'alice';
const TABLE = fileTableFor(VICTIM);

/** The first `n` user ids `<prefix><i>` whose seed hash puts them in the victim's table. */
function sameTableUsers(prefix: string, n: number): string[] {
  const out: string[] = [];
  for (let i = 0; out.length < n; i++) {
    const u = `${prefix}${i}`;
    if (u !== VICTIM && fileTableFor(u) === TABLE) out.push(u);
  }
  return out;
}

const source = (data: Buffer): UploadSource => ({
  size: data.length,
  async *open() {
    yield data;
  },
});

async function* once(data: Buffer): AsyncGenerator<Uint8Array> {
  yield data;
}

/** errno and text of an error reply with the file id taken out, to compare two replies. */
const shape = (e: RemoteError, fileId: string) => ({
  errno: e.errno,
  code: e.code,
  text: e.message.replaceAll(fileId, '<fileid>'),
});

describe.each(BACKENDS.map((f) => [f().name, f] as const))('tenant isolation on %s', (_name, makeBackend) => {
  let backend: Backend;
  let a: StorageNode;
  let dbh: DbHandle;
  let sc: StorageClient;
  const ids = idStub();
  const attackers = [
    ...sameTableUsers('mallory', 3).map((userId) => ({ appId: APP, userId })),
    // the same user name in another app lands in the same table (the hash takes the user only)
    { appId: 'otherapp', userId: VICTIM },
  ];
  let pair: MemberPair;
  const addrA = (): Address => pair.addrA();
  const addrB = (): Address => pair.addrB();

  beforeAll(async () => {
    pair = await startMemberPair(makeBackend, 'dsm-tenant-', {
      log,
      idSource: ids.source,
      extra: { metaCacheTtlMs: 60_000 },
    });
    ({ backend, a, dbh, sc } = pair);
  });

  afterAll(() => pair?.close());

  it('the attackers really share the victim table (computed with the seed hash)', () => {
    expect(attackers.length).toBe(4);
    for (const x of attackers) expect(fileTableFor(x.userId)).toBe(TABLE);
  });

  /** Uploads a file for the victim; returns its ids and bytes. */
  async function victimFile(): Promise<{ ids: FileIds; data: Buffer }> {
    const data = randomBytes(40_000);
    const v: FileIds = { appId: APP, userId: VICTIM, fileId: newFileId() };
    await sc.uploadExt(addrA(), v, 'video/mp4', source(data));
    return { ids: v, data };
  }

  async function victimIntact(v: FileIds, data: Buffer, at: Address = addrB()): Promise<void> {
    expect(await sc.size(at, v)).toBe(data.length);
    const d = await sc.download(at, { ...v, offset: 0, size: 0 });
    expect((await collect(d.stream)).equals(data)).toBe(true);
  }

  /** The replies of every file operation for `who` naming `fileId`, file id masked. */
  async function replies(at: Address, who: { appId: string; userId: string }, fileId: string) {
    const x: FileIds = { ...who, fileId };
    return {
      size: shape(await errorReplyOf(sc.size(at, x)), fileId),
      stat: shape(await errorReplyOf(sc.stat(at, x)), fileId),
      download: shape(await errorReplyOf(sc.download(at, { ...x, offset: 0, size: 0 })), fileId),
      range: shape(await errorReplyOf(sc.download(at, { ...x, offset: 10, size: 100 })), fileId),
      delete: shape(await errorReplyOf(sc.delete(at, x)), fileId),
    };
  }

  it('size, stat, download and delete of a victim file by same-table users answer exactly like a missing file', async () => {
    const { ids: v, data } = await victimFile();
    for (const who of attackers) {
      for (const at of [addrA(), addrB()]) {
        const missing = await replies(at, who, newFileId());
        expect(missing.size.errno).toBe(Errno.NOT_FOUND);
        const foreign = await replies(at, who, v.fileId);
        expect(foreign, `${who.appId}/${who.userId}`).toEqual(missing);
      }
    }
    // the attackers' deletes removed nothing: row, file and bytes are still there
    await victimIntact(v, data, addrA());
    await victimIntact(v, data, addrB());
    const row = await dbh.db
      .selectFrom(TABLE)
      .selectAll()
      .where('id', '=', v.fileId)
      .executeTakeFirstOrThrow();
    expect(row).toMatchObject({ appid: APP, userid: VICTIM });
    expect(readFileSync(row.file_path as string).equals(data)).toBe(true);
  });

  it('a warm metadata cache does not answer for another tenant', async () => {
    const { ids: v, data } = await victimFile();
    // the victim's reads warm both members' cache entries
    await victimIntact(v, data, addrA());
    await victimIntact(v, data, addrB());
    await sc.stat(addrA(), v);
    for (const who of attackers) {
      const e = await errorReplyOf(sc.size(addrA(), { ...who, fileId: v.fileId }));
      expect(e.errno).toBe(Errno.NOT_FOUND);
      const d = await errorReplyOf(sc.download(addrB(), { ...who, fileId: v.fileId, offset: 0, size: 0 }));
      expect(d.errno).toBe(Errno.NOT_FOUND);
      expect((await errorReplyOf(sc.stat(addrB(), { ...who, fileId: v.fileId }))).errno).toBe(
        Errno.NOT_FOUND,
      );
      expect((await errorReplyOf(sc.delete(addrA(), { ...who, fileId: v.fileId }))).errno).toBe(
        Errno.NOT_FOUND,
      );
    }
    await victimIntact(v, data, addrA());
    // and the owner's delete still works, through the other member
    await sc.delete(addrB(), v);
    expect((await errorReplyOf(sc.size(addrA(), v))).errno).toBe(Errno.NOT_FOUND);
  });

  it('rows written by the seed (no checksum, type or mtime) are owner-checked; rows without an owner serve nobody', async () => {
    const { ids: v, data } = await victimFile();
    const row = await dbh.db
      .selectFrom(TABLE)
      .selectAll()
      .where('id', '=', v.fileId)
      .executeTakeFirstOrThrow();
    // what the seed wrote: app, user, path, size; nothing else
    const seedId = newFileId();
    const ownerless = newFileId();
    const seedRow = { ...row, sha256: null, content_type: null, mtime_ms: null };
    await dbh.db
      .insertInto(TABLE)
      .values({ ...seedRow, id: seedId })
      .execute();
    await dbh.db
      .insertInto(TABLE)
      .values({ ...seedRow, id: ownerless, appid: null, userid: null })
      .execute();
    const seedIds = { ...v, fileId: seedId };
    for (const who of attackers) {
      expect(await replies(addrA(), who, seedId)).toEqual(await replies(addrA(), who, newFileId()));
    }
    // the owner still gets it, checksum computed on the first stat
    const st = await sc.stat(addrA(), seedIds);
    expect(st.size).toBe(data.length);
    await victimIntact(seedIds, data);
    // no owner recorded: nobody's claim matches, not even an empty app/user
    for (const who of [...attackers, { appId: APP, userId: VICTIM }, { appId: APP, userId: '' }]) {
      expect(await replies(addrB(), who, ownerless)).toEqual(await replies(addrB(), who, newFileId()));
    }
    expect(await dbh.db.selectFrom(TABLE).select('id').where('id', '=', ownerless).execute()).toHaveLength(1);
    await sc.delete(addrA(), seedIds);
  });

  it('resumable uploads: append, offset, commit and abort of a victim upload answer like a missing upload', async () => {
    const v: FileIds = { appId: APP, userId: VICTIM, fileId: newFileId() };
    const part = randomBytes(5000);
    await sc.uploadCreate(addrA(), v, 10_000, 'video/mp4');
    expect(await sc.uploadAppend(addrA(), v, 0, part.length, once(part))).toBe(part.length);
    const missingId = newFileId();
    const ops = async (who: { appId: string; userId: string }, fileId: string) => {
      const x = { ...who, fileId };
      const junk = Buffer.alloc(100, 7);
      return {
        append: shape(
          await errorReplyOf(sc.uploadAppend(addrB(), x, part.length, junk.length, once(junk))),
          fileId,
        ),
        offset: shape(await errorReplyOf(sc.uploadOffset(addrB(), x)), fileId),
        commit: shape(await errorReplyOf(sc.uploadCommit(addrB(), x)), fileId),
        abort: shape(await errorReplyOf(sc.uploadAbort(addrB(), x)), fileId),
      };
    };
    for (const who of attackers) {
      const missing = await ops(who, missingId);
      expect(missing.offset.errno).toBe(Errno.NOT_FOUND);
      expect(await ops(who, v.fileId)).toEqual(missing);
    }
    // the victim's upload is untouched and finishes
    expect(await sc.uploadOffset(addrA(), v)).toEqual({ offset: part.length, totalSize: 10_000 });
    const rest = randomBytes(5000);
    await sc.uploadAppend(addrA(), v, part.length, rest.length, once(rest));
    const st = await sc.uploadCommit(addrA(), v);
    expect(st.size).toBe(10_000);
    await victimIntact(v, Buffer.concat([part, rest]));
    // an id is a key: creating or uploading under a taken id is refused whoever asks (it says
    // the id is taken, nothing about the file), and the victim's file stays
    const e = await errorReplyOf(sc.uploadCreate(addrB(), { ...attackers[0]!, fileId: v.fileId }, 10, ''));
    expect(e.errno).toBe(Errno.EXISTS);
    const u = await errorReplyOf(
      sc.uploadExt(addrB(), { ...attackers[0]!, fileId: v.fileId }, '', source(part)),
    );
    expect(u.errno).toBe(Errno.EXISTS);
    await victimIntact(v, Buffer.concat([part, rest]));
    expect(existsSync(join(a.storePaths[0] as string, '.partial', v.fileId))).toBe(false);
  });

  it('a user id that is not valid UTF-8 owns nothing (it would decode to the text of another user)', async () => {
    // U+FFFD recorded as a user id; a request whose user id is one invalid byte decodes to the
    // same text. Pick (compute) such a byte that also lands in the same table.
    const stored = '\uFFFD';
    const table = fileTableFor(stored);
    let bad = 0x80;
    while (fileTableFor(new Uint8Array([bad])) !== table) bad++;
    expect(bad).toBeLessThan(0x100);
    const v: FileIds = { appId: APP, userId: stored, fileId: newFileId() };
    const data = randomBytes(1000);
    await sc.uploadExt(addrA(), v, '', source(data));
    await victimIntact(v, data);
    // the client encodes strings as UTF-8: a raw frame carries the invalid byte
    const body = encodeIds(v);
    body.fill(0, APPID_WIDTH, APPID_WIDTH + USERID_WIDTH);
    body[APPID_WIDTH] = bad;
    const errnoOf = async (cmd: number) => {
      const c = await RawConn.open(a.port);
      try {
        await c.write(encodeFrame(cmd, body));
        const got = await c.readFrame();
        expect(got).not.toBeNull();
        return decodeErrorReply((got as RawFrame).body).errno;
      } finally {
        c.close();
      }
    };
    expect(await errnoOf(Command.STORAGE_SIZE)).toBe(Errno.NOT_FOUND);
    expect(await errnoOf(Command.STORAGE_STAT)).toBe(Errno.NOT_FOUND);
    expect(await errnoOf(Command.STORAGE_DELETE)).toBe(Errno.NOT_FOUND);
    await victimIntact(v, data);
  });

  it('metadata cache: entries are keyed and checked by owner; another key, a forged entry or the old key never answer', async () => {
    const kv = createKvStore(backend.cacheUrl('meta-unit:'));
    const meta = new MetaStore(dbh.db, kv, 60_000, log);
    const owner = (appId: string, userId: string) => ownerOf(appId, userId, new TextEncoder().encode(userId));
    const fileId = newFileId();
    const m: FileMeta = {
      table: TABLE,
      fileId,
      appId: APP,
      userId: VICTIM,
      path: '/nowhere/file',
      size: 5,
      contentType: 'video/mp4',
      sha256: null,
      mtimeMs: 1,
    };
    try {
      await meta.insert(m);
      const victim = owner(APP, VICTIM);
      expect((await meta.find(TABLE, fileId, victim))?.cached).toBe(false);
      expect((await meta.find(TABLE, fileId, victim))?.cached).toBe(true); // warm
      // the lookup kept in the process answers its owner only, and a user id whose bytes were
      // not valid UTF-8 (decoded to the same text) never
      expect(meta.findHot(TABLE, fileId, victim)?.fileId).toBe(fileId);
      for (const x of attackers) expect(meta.findHot(TABLE, fileId, owner(x.appId, x.userId))).toBeNull();
      expect(meta.findHot(TABLE, fileId, ownerOf(APP, VICTIM, new Uint8Array([0xff])))).toBeNull();
      expect(meta.findHot('t_file_02' === TABLE ? 't_file_03' : 't_file_02', fileId, victim)).toBeNull();
      const entry = await kv.get(MetaStore.cacheKey(fileId, victim));
      expect(entry).not.toBeNull();
      for (const x of attackers) {
        const o = owner(x.appId, x.userId);
        expect(await meta.find(TABLE, fileId, o)).toBeNull();
        // an entry with the victim's data under the attacker's key (as if two keys ever met)
        await kv.set(MetaStore.cacheKey(fileId, o), entry as string, 60_000);
        expect(await meta.find(TABLE, fileId, o)).toBeNull();
      }
      // the key of the old format (file id only) is not read
      await kv.set(`storage:meta:${fileId}`, entry as string, 60_000);
      expect(await meta.find(TABLE, fileId, owner(APP, 'mallory'))).toBeNull();
      // app and user are escaped: no (app, user) pair spells another pair's key
      expect(MetaStore.cacheKey(fileId, { appId: 'a', userId: 'b:c' })).not.toBe(
        MetaStore.cacheKey(fileId, { appId: 'a:b', userId: 'c' }),
      );
      expect(MetaStore.cacheKey(fileId, { appId: 'a', userId: 'b%3Ac' })).not.toBe(
        MetaStore.cacheKey(fileId, { appId: 'a', userId: 'b:c' }),
      );
      // removing needs the owner too
      expect(await meta.remove(TABLE, fileId, owner(APP, attackers[0]?.userId as string))).toBe(false);
      expect(await meta.remove(TABLE, fileId, victim)).toBe(true);
      // evict drops the kept lookup with the KV entry
      expect(meta.findHot(TABLE, fileId, victim)).not.toBeNull();
      await meta.evict(fileId, victim);
      expect(meta.findHot(TABLE, fileId, victim)).toBeNull();
      expect(await meta.find(TABLE, fileId, victim)).toBeNull();
    } finally {
      await kv.close();
    }
  });
});
