import { RemoteError } from '@dsm/client';
import { createLogger } from '@dsm/common';
import { Errno, type IdRange } from '@dsm/packets';
import { describe, expect, it } from 'vitest';
import { IdRanges } from './id-ranges.ts';

const log = createLogger('id-ranges-test');

/** Ranges as an id server hands them out: consecutive segments of one counter per key. */
function counter() {
  let next = 0;
  const asked: number[] = [];
  return {
    asked,
    range: async (_key: string, count: number): Promise<IdRange> => {
      asked.push(count);
      const first = next;
      next += count;
      return { first, count };
    },
  };
}

describe('IdRanges', () => {
  it('hands out each id of its ranges once, asking once per range and ahead of need', async () => {
    const c = counter();
    const ids = new IdRanges(c.range, async () => -1, 8, log);
    const got: number[] = [];
    for (let i = 0; i < 40; i++) got.push(await ids.next('g:0'));
    expect(got).toEqual(Array.from({ length: 40 }, (_, i) => i));
    expect(c.asked.every((n) => n === 8)).toBe(true);
    expect(c.asked.length).toBeLessThanOrEqual(6); // 5 ranges used, at most one fetched ahead
    const together = await Promise.all(Array.from({ length: 30 }, () => ids.next('g:0')));
    expect(new Set(together).size).toBe(30);
    expect(together.every((id) => id >= 40)).toBe(true);
  });

  it('falls back to one id per request when the id server does not know the range command', async () => {
    let singles = 0;
    const ids = new IdRanges(
      async () => {
        throw new RemoteError(Errno.UNKNOWN_COMMAND, '[seed] Unknown Command: 41');
      },
      async () => 1000 + singles++,
      8,
      log,
    );
    expect([await ids.next('g:0'), await ids.next('g:0')]).toEqual([1000, 1001]);
  });

  it('passes other failures on and tries again on the next call', async () => {
    let fail = true;
    const c = counter();
    const ids = new IdRanges(
      async (key, n) => {
        if (fail) throw new Error('id server down');
        return c.range(key, n);
      },
      async () => -1,
      4,
      log,
    );
    await expect(ids.next('g:0')).rejects.toThrow('id server down');
    fail = false;
    expect(await ids.next('g:0')).toBe(0);
  });
});
