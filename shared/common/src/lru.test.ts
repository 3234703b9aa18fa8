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

  it('refuses a bound below 1', () => {
    expect(() => new LruMap(0)).toThrow(RangeError);
  });
});
