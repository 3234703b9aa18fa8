import type { StreamReply } from '@dsm/client';
import type { FileIds } from '@dsm/packets';
import { describe, expect, it } from 'vitest';
import { SliceCache, type SliceKey, type SliceSource, type SliceStore } from './slices.ts';
import { patternBytes } from './test-support.ts';

// The slice cache with a store (the Worker's Cache API) behind it: a slice read from the storage
// stays shared while the store takes it, so a request that comes in between is served from it
// and does not read the slice again (the store cannot give it yet).

const KiB = 1024;
const SLICE = 64 * KiB;

async function drain(s: ReadableStream<Uint8Array>): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  const reader = s.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
  }
  return Buffer.concat(parts);
}

describe('SliceCache with a store', () => {
  it('serves a slice that is being stored from the read that got it, not from a second read', async () => {
    const data = patternBytes(SLICE, 5);
    let reads = 0;
    const source: SliceSource = {
      read: async (_ids, offset, length): Promise<StreamReply> => {
        reads++;
        const bytes = data.subarray(offset, offset + length);
        return {
          header: {} as StreamReply['header'],
          length,
          stream: (async function* () {
            yield bytes;
          })(),
        };
      },
    };
    // a store that takes its time: put resolves when the test says so
    const stored = new Map<string, Uint8Array>();
    let release: () => void = () => {};
    const putDone = new Promise<void>((r) => {
      release = r;
    });
    let puts = 0;
    const store: SliceStore = {
      get: async (k: SliceKey) => stored.get(`${k.publicId}/${k.index}`) ?? null,
      put: async (k: SliceKey, bytes: Uint8Array) => {
        puts++;
        await putDone;
        stored.set(`${k.publicId}/${k.index}`, bytes);
      },
    };
    const cache = new SliceCache({ sliceBytes: SLICE, maxBytes: 0, store });
    const f = { publicId: 'p1', etag: '"e"', ids: {} as FileIds, size: data.length };
    const get = () => drain(cache.stream(f, 0, data.length, { source, keep: true, stallMs: 5000 }));

    expect((await get()).equals(Buffer.from(data))).toBe(true);
    // the read is over, the store has not taken the slice yet
    for (let i = 0; i < 20 && puts === 0; i++) await new Promise((r) => setTimeout(r, 5));
    expect(puts).toBe(1);
    expect(stored.size).toBe(0);
    expect((await get()).equals(Buffer.from(data))).toBe(true);
    expect(reads, 'a request while the slice was being stored read it again').toBe(1);

    release();
    for (let i = 0; i < 20 && cache.reading > 0; i++) await new Promise((r) => setTimeout(r, 5));
    expect(cache.reading).toBe(0);
    expect(stored.size).toBe(1);
    expect((await get()).equals(Buffer.from(data))).toBe(true);
    expect(reads).toBe(1); // from the store
  });
});
