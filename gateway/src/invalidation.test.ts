import { MemoryKvStore } from '@dsm/kv/memory';
import { afterEach, describe, expect, it } from 'vitest';
import { DeleteJournal } from './invalidation.ts';

// The delete journal over a real in-process KvStore (the Redis one is exercised by
// caches.test.ts with two gateways): what a reader drops, and when it refuses its caches.

const stores: MemoryKvStore[] = [];
afterEach(async () => {
  for (const s of stores.splice(0)) await s.close();
});

function journalOn(kv: MemoryKvStore, pollMs = 20) {
  const deleted: string[] = [];
  let lost = 0;
  const j = new DeleteJournal(
    kv,
    pollMs,
    (id) => deleted.push(id),
    () => {
      lost++;
    },
  );
  return { j, deleted, lost: () => lost };
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
    // and stays refused: no read is retried within pollMs of the failure
    expect(await reader.j.usable()).toBe(false);
  });
});
