/**
 * The allocator against a scripted store (per-key waiting, failures, retries), and the real
 * segment store racing itself from two database handles (the seed's quirk 12).
 */
import { createDb, type DbHandle } from '@dsm/db';
import { Errno } from '@dsm/packets';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DbSegmentStore, IdAllocator, type SegmentStore } from './id-allocator.ts';
import { BACKENDS, testLog } from './test-support.ts';

interface Call {
  key: string;
  resolve: (base: number) => void;
  reject: (e: unknown) => void;
}

/** A store whose reservations complete only when the test says so. */
class ScriptedStore implements SegmentStore {
  calls: Call[] = [];
  prepares = 0;
  failPrepare = false;
  async prepare(): Promise<void> {
    this.prepares++;
    if (this.failPrepare) throw Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });
  }
  reserve(key: string): Promise<number> {
    return new Promise((resolve, reject) => this.calls.push({ key, resolve, reject }));
  }
  take(key: string): Call {
    const i = this.calls.findIndex((c) => c.key === key);
    if (i < 0) throw new Error(`no pending reservation for ${key}`);
    return this.calls.splice(i, 1)[0] as Call;
  }
}

const tick = () => new Promise((r) => setTimeout(r, 5));

describe('IdAllocator', () => {
  it('one reservation per key at a time; waiters share it; other keys are not held up', async () => {
    const store = new ScriptedStore();
    const a = new IdAllocator(store, { step: 10 });
    const many = Array.from({ length: 25 }, () => a.next('a'));
    await tick();
    expect(store.calls.map((c) => c.key)).toEqual(['a']);
    // 'b' reserves while 'a' is still waiting for the database.
    const b = a.next('b');
    await tick();
    expect(store.calls.map((c) => c.key)).toEqual(['a', 'b']);
    store.take('b').resolve(500);
    expect(await b).toBe(500);
    // 'a' gets segment [100, 110): 10 waiters served, then one more reservation for the rest.
    store.take('a').resolve(100);
    await tick();
    expect(store.calls.map((c) => c.key)).toEqual(['a']);
    store.take('a').resolve(300);
    await tick();
    expect(store.calls.map((c) => c.key)).toEqual(['a']);
    store.take('a').resolve(900);
    const ids = await Promise.all(many);
    expect(ids).toEqual([
      ...Array.from({ length: 10 }, (_, i) => 100 + i),
      ...Array.from({ length: 10 }, (_, i) => 300 + i),
      ...Array.from({ length: 5 }, (_, i) => 900 + i),
    ]);
    expect(a.reservations).toBe(4);
    expect(await a.next('b')).toBe(501);
    expect(store.prepares).toBe(1);
  });

  it('a failed reservation fails every waiter with DB_UNAVAILABLE; the next request retries', async () => {
    const store = new ScriptedStore();
    const a = new IdAllocator(store, { step: 10, log: testLog.child({ test: 'fail' }) });
    const waiting = Array.from({ length: 3 }, () => a.next('k').catch((e) => e));
    await tick();
    store.take('k').reject(Object.assign(new Error('Connection lost'), { code: 'PROTOCOL_CONNECTION_LOST' }));
    for (const e of await Promise.all(waiting)) {
      expect(e).toMatchObject({ errno: Errno.DB_UNAVAILABLE, message: 'GET ID Fail, Key: k' });
    }
    const next = a.next('k');
    await tick();
    store.take('k').resolve(40);
    expect(await next).toBe(40);
  });

  it('a failed prepare (migration) is retried on the next request', async () => {
    const store = new ScriptedStore();
    store.failPrepare = true;
    const a = new IdAllocator(store, { step: 10 });
    await expect(a.next('k')).rejects.toMatchObject({ errno: Errno.DB_UNAVAILABLE });
    store.failPrepare = false;
    const next = a.next('k');
    await tick();
    store.take('k').resolve(0);
    expect(await next).toBe(0);
    expect(store.prepares).toBe(2);
  });

  it('refuses a counter outside the safe integer range', async () => {
    const store = new ScriptedStore();
    const a = new IdAllocator(store, { step: 10 });
    const p = a.next('k');
    await tick();
    store.take('k').resolve(Number.MAX_SAFE_INTEGER - 5);
    await expect(p).rejects.toMatchObject({ errno: Errno.RANGE, message: 'GET ID Fail, Key: k' });
  });
});

describe.each(BACKENDS)('DbSegmentStore on %s', (_name, makeBackend) => {
  const backend = makeBackend();
  const handles: DbHandle[] = [];

  beforeAll(() => backend.setup());
  afterAll(async () => {
    for (const h of handles) await h.close();
    await backend.cleanup();
  });

  it('two handles racing on one database reserve every segment exactly once', async () => {
    const url = backend.database('store_race');
    const stores = [0, 1].map(() => {
      const h = createDb(url, { connectionLimit: 8 });
      handles.push(h);
      return new DbSegmentStore(h);
    });
    await Promise.all(stores.map((s) => s.prepare()));
    const step = 10;
    const perStore = 150;
    for (const key of ['race/new', 'race/new2']) {
      // Both start on a key with no row: the first INSERT races too.
      const bases = await Promise.all(
        stores.flatMap((s) => Array.from({ length: perStore }, () => s.reserve(key, step))),
      );
      const sorted = [...bases].sort((x, y) => x - y);
      expect(sorted).toEqual(Array.from({ length: 2 * perStore }, (_, i) => i * step));
    }
  });
});
