import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type DsmError, isDsmError } from '@dsm/common';
import { Errno } from '@dsm/packets';
import { afterAll, describe, expect, it } from 'vitest';
import { FileLock, isLockHeld, LinkClaim } from './lock.ts';

const dir = mkdtempSync(join(tmpdir(), 'dsm-lock-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
const fresh = () => join(dir, `upload-${++n}.lock`);

async function busy(p: Promise<unknown>): Promise<DsmError> {
  const e = await p.then(
    () => null,
    (x: unknown) => x,
  );
  if (!isDsmError(e)) throw new Error(`expected a DsmError, got ${String(e)}`);
  expect(e.errno).toBe(Errno.BUSY);
  return e;
}

describe('FileLock', () => {
  it('is exclusive until released', async () => {
    const path = fresh();
    const l1 = await FileLock.acquire(path, 'a', 'f1');
    expect(await isLockHeld(path)).toBe(true);
    const e = await busy(FileLock.acquire(path, 'b', 'f1'));
    expect(e.message).toBe('Upload Busy, Fileid: f1');
    await l1.release();
    expect(existsSync(path)).toBe(false);
    const l2 = await FileLock.acquire(path, 'b', 'f1');
    await l1.release(); // a second release of an old lock does not touch the new one
    expect(existsSync(path)).toBe(true);
    await l2.release();
  });

  it('only one of many concurrent takers wins', async () => {
    const path = fresh();
    const results = await Promise.allSettled(
      Array.from({ length: 8 }, (_, i) => FileLock.acquire(path, `o${i}`, 'f')),
    );
    const won = results.filter((r) => r.status === 'fulfilled') as PromiseFulfilledResult<FileLock>[];
    expect(won).toHaveLength(1);
    await won[0]?.value.release();
  });

  it('steals an expired lock (its holder died); a live one is kept', async () => {
    const path = fresh();
    writeFileSync(path, JSON.stringify({ token: 'dead', owner: 'x', expiresMs: Date.now() - 1 }));
    const l = await FileLock.acquire(path, 'me', 'f');
    expect(JSON.parse(readFileSync(path, 'utf8')).token).toBe(l.token);
    await l.release();

    writeFileSync(path, JSON.stringify({ token: 'alive', owner: 'x', expiresMs: Date.now() + 60_000 }));
    await busy(FileLock.acquire(path, 'me', 'f'));
    expect(JSON.parse(readFileSync(path, 'utf8')).token).toBe('alive');
  });

  it('an unreadable lock file counts as valid for a TTL after its last change', async () => {
    const path = fresh();
    writeFileSync(path, '{"tok');
    await busy(FileLock.acquire(path, 'me', 'f', 60_000));
    const old = new Date(Date.now() - 120_000);
    utimesSync(path, old, old);
    const l = await FileLock.acquire(path, 'me', 'f', 60_000);
    await l.release();
  });

  it('held(): true while the lock file is this lock, false once another took it over', async () => {
    const path = fresh();
    const l = await FileLock.acquire(path, 'me', 'f', 60_000);
    expect(await l.held()).toBe(true);
    writeFileSync(path, JSON.stringify({ token: 'thief', owner: 'x', expiresMs: Date.now() + 60_000 }));
    expect(await l.held()).toBe(false);
    await l.release(); // not ours: left in place
    expect(JSON.parse(readFileSync(path, 'utf8')).token).toBe('thief');
    rmSync(path);
    const m = await FileLock.acquire(path, 'me', 'f', 60_000);
    await m.release();
    expect(await m.held()).toBe(false);
  });

  it('a holder refreshes its expiry', async () => {
    const path = fresh();
    const l = await FileLock.acquire(path, 'me', 'f', 90);
    await new Promise((r) => setTimeout(r, 250));
    expect(await isLockHeld(path, 90)).toBe(true);
    await busy(FileLock.acquire(path, 'other', 'f', 90));
    await l.release();
    expect(await isLockHeld(path, 90)).toBe(false);
  });
});

describe('LinkClaim (an upload claim that is its temp file under a second name)', () => {
  const TTL = 6000;
  let k = 0;
  const temp = () => {
    const p = join(dir, `tmp-${++k}`);
    writeFileSync(p, `body ${k}`);
    return p;
  };

  it('is exclusive until released, costs no new file, and is seen by FileLock and isLockHeld', async () => {
    const path = fresh();
    const t1 = temp();
    const c1 = (await LinkClaim.acquire(path, t1, 'f1', TTL)) as LinkClaim;
    expect(c1).not.toBeNull();
    expect(statSync(path).ino).toBe(statSync(t1).ino); // the temp file itself
    expect(await c1.held()).toBe(true);
    const e = await busy(LinkClaim.acquire(path, temp(), 'f1', TTL));
    expect(e.message).toBe('Upload Busy, Fileid: f1');
    // a member still on FileLock sees it as held (not lock JSON: valid for a ttl after its mtime)
    await busy(FileLock.acquire(path, 'old', 'f1', TTL));
    expect(await isLockHeld(path, TTL)).toBe(true);
    await c1.release();
    expect(existsSync(path)).toBe(false);
    expect(existsSync(t1)).toBe(true); // the temp name is the upload's business
    const c2 = (await LinkClaim.acquire(path, temp(), 'f1', TTL)) as LinkClaim;
    await c1.release(); // a second release of an old claim does not touch the new one
    expect(existsSync(path)).toBe(true);
    await c2.release();
  });

  it('only one of many concurrent takers wins', async () => {
    const path = fresh();
    const results = await Promise.allSettled(
      Array.from({ length: 8 }, () => LinkClaim.acquire(path, temp(), 'f', TTL)),
    );
    const won = results.filter((r) => r.status === 'fulfilled') as PromiseFulfilledResult<LinkClaim>[];
    expect(won).toHaveLength(1);
    await won[0]?.value.release();
  });

  it('takes over an expired claim (its holder died); the old holder then no longer holds it', async () => {
    const path = fresh();
    const dead = temp();
    const old = (await LinkClaim.acquire(path, dead, 'f', TTL)) as LinkClaim;
    const stale = new Date(Date.now() - 2 * TTL);
    utimesSync(dead, stale, stale); // silent for two ttls: what a killed holder leaves
    const mine = temp();
    const c = (await LinkClaim.acquire(path, mine, 'f', TTL)) as LinkClaim;
    expect(statSync(path).ino).toBe(statSync(mine).ino);
    expect(await old.held()).toBe(false); // it must not commit
    await old.release(); // and its release leaves the new claim alone
    expect(statSync(path).ino).toBe(statSync(mine).ino);
    await c.release();
    expect(existsSync(path)).toBe(false);
  });

  it('keeps a live claim of another kind: a FileLock of an older member', async () => {
    const path = fresh();
    writeFileSync(path, JSON.stringify({ token: 'alive', owner: 'x', expiresMs: Date.now() + 60_000 }));
    await busy(LinkClaim.acquire(path, temp(), 'f', TTL));
    expect(JSON.parse(readFileSync(path, 'utf8')).token).toBe('alive');
    writeFileSync(path, JSON.stringify({ token: 'dead', owner: 'x', expiresMs: Date.now() - 1 }));
    const stale = new Date(Date.now() - 2 * TTL);
    utimesSync(path, stale, stale);
    const c = (await LinkClaim.acquire(path, temp(), 'f', TTL)) as LinkClaim;
    expect(await c.held()).toBe(true);
    await c.release();
  });

  it('answers null where no hard link can be made (another file system): the caller takes a FileLock', async () => {
    const shm = '/dev/shm';
    if (!existsSync(shm)) throw new Error('/dev/shm (tmpfs) is needed for this test');
    const other = mkdtempSync(join(shm, 'dsm-lock-'));
    try {
      expect(await LinkClaim.acquire(join(other, 'x.lock'), temp(), 'f', TTL)).toBeNull();
      expect(existsSync(join(other, 'x.lock'))).toBe(false);
    } finally {
      rmSync(other, { recursive: true, force: true });
    }
  });
});
