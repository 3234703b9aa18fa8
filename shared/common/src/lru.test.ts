import { describe, expect, it } from 'vitest';
import { LruMap } from './lru.ts';

describe('LruMap', () => {
  it('keeps its size at the bound when filled past it, dropping the least recently used', () => {
    const m = new LruMap<string, number>(100);
    for (let i = 0; i < 10_000; i++) {
      m.set(`k${i}`, i);
      if (i === 50) m.get('k0'); // touched: survives the next evictions for a while
    }
    expect(m.size).toBe(100);
    expect(m.has('k9999')).toBe(true);
    expect(m.has('k1')).toBe(false);
  });

  it('moves a read entry to the most recently used end', () => {
    const m = new LruMap<string, number>(2);
    m.set('a', 1).set('b', 2);
    expect(m.get('a')).toBe(1);
    m.set('c', 3);
    expect([...m.keys()]).toEqual(['a', 'c']);
  });

  it('keeps the order against a model, with reads of the newest entry (not moved), deletes and clears', () => {
    // a reference LRU: an array, most recent last
    let seed = 7;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    for (const max of [1, 2, 3, 5]) {
      const m = new LruMap<string, number>(max);
      let model: string[] = [];
      for (let step = 0; step < 5000; step++) {
        const k = `k${rnd(7)}`;
        const op = rnd(10);
        if (op < 4) {
          m.set(k, step);
          model = [...model.filter((x) => x !== k), k];
          while (model.length > max) model.shift();
        } else if (op < 8) {
          const had = model.includes(k);
          expect(m.get(k) !== undefined).toBe(had);
          if (had) model = [...model.filter((x) => x !== k), k];
        } else if (op < 9) {
          m.delete(k);
          model = model.filter((x) => x !== k);
        } else if (rnd(20) === 0) {
          m.clear();
          model = [];
        }
        expect([...m.keys()]).toEqual(model);
      }
    }
  });

  it('refuses a bound below 1', () => {
    expect(() => new LruMap(0)).toThrow(RangeError);
  });
});
