import { MemoryKvStore } from '@dsm/kv/memory';
import { afterEach, describe, expect, it } from 'vitest';
import { DeleteJournal, KvDeleteLog, readWaitMs } from './invalidation.ts';

// The delete journal over a real in-process KvStore (the Redis one is exercised by
// caches.test.ts with two gateways): what a reader drops, and when it refuses its caches.

const stores: MemoryKvStore[] = [];
afterEach(async () => {
  for (const s of stores.splice(0)) await s.close();
});

function journalOn(kv: MemoryKvStore, pollMs = 20) {
  const deleted: string[] = [];
  const failures: unknown[] = [];
  let lost = 0;
  const j = new DeleteJournal(
    new KvDeleteLog(kv),
    pollMs,
    (id) => deleted.push(id),
    () => {
      lost++;
    },
    (e) => failures.push(e),
  );
  return { j, deleted, failures, lost: () => lost };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('the delete journal', () => {
  it('hands a reader exactly the ids deleted through another writer since its last read', async () => {
    const kv = new MemoryKvStore();
    stores.push(kv);
    const writer = journalOn(kv, 500);
    const reader = journalOn(kv, 500);
    expect(await reader.j.usable()).toBe(true); // first read: nothing known yet, drops all
    expect(reader.lost()).toBe(1);
    await writer.j.publish('file-a');
    await writer.j.publish('file-b');
    // fresh for pollMs: no read, nothing dropped yet
    expect(reader.j.usable()).toBe(true);
    expect(reader.deleted).toEqual([]);
    await sleep(1100); // past 2 × pollMs: the next use waits for a read
    expect(await reader.j.usable()).toBe(true);
    expect(reader.deleted).toEqual(['file-a', 'file-b']);
    expect(reader.lost()).toBe(1);
  });

  it('drops everything when an entry it should read is gone', async () => {
    const kv = new MemoryKvStore();
    stores.push(kv);
    const writer = journalOn(kv);
    const reader = journalOn(kv);
    await reader.j.usable();
    await writer.j.publish('file-a');
    await kv.del('files:deleted:1');
    await sleep(50);
    expect(await reader.j.usable()).toBe(true);
    expect(reader.deleted).toEqual([]);
    expect(reader.lost()).toBe(2);
  });

  it('refuses the caches (and drops them) while the store cannot be read', async () => {
    const kv = new MemoryKvStore();
    const reader = journalOn(kv);
    expect(await reader.j.usable()).toBe(true);
    await kv.close();
    await sleep(50);
    expect(await reader.j.usable()).toBe(false);
    expect(reader.lost()).toBe(2);
    // the failure is reported (the gateway logs it)
    expect(reader.failures).toHaveLength(1);
    expect(String(reader.failures[0])).toMatch(/closed/);
    // and stays refused: no read is retried within pollMs of the failure
    expect(await reader.j.usable()).toBe(false);
  });

  it('a read that hangs costs requests their cache hits, not their time: false after readWaitMs, true once it answers', async () => {
    const kv = new MemoryKvStore();
    stores.push(kv);
    let gate: (() => void) | null = null;
    const slow = new Proxy(kv, {
      get(target, prop, receiver) {
        if (prop !== 'get') return Reflect.get(target, prop, receiver);
        return async (key: string) => {
          if (gate === null) await new Promise<void>((r) => (gate = r));
          return target.get(key);
        };
      },
    });
    const reader = journalOn(slow, 100);
    const t0 = performance.now();
    const waits = await Promise.all(Array.from({ length: 50 }, () => reader.j.usable()));
    const waited = performance.now() - t0;
    expect(waits.every((w) => w === false)).toBe(true);
    expect(readWaitMs(100)).toBe(1000);
    expect(waited).toBeGreaterThanOrEqual(995);
    expect(waited).toBeLessThan(1600);
    // the store answers: the read under way completes and the caches are usable again
    (gate as unknown as () => void)();
    await sleep(10);
    expect(await reader.j.usable()).toBe(true);
    expect(reader.lost()).toBe(1);
  });
});
