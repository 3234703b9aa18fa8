import { describe, expect, it } from 'vitest';
import { isValidFileId, newFileId } from './file-id.ts';

describe('newFileId', () => {
  it('gives ids of the seed shape, none repeated and none sharing its random part, across refills of the random pool', () => {
    const at = Date.UTC(2026, 11, 4, 12, 0, 0);
    const ids = Array.from({ length: 5000 }, () => newFileId(at));
    for (const id of ids) {
      expect(id).toMatch(/^[0-9a-f]{8}[0-9a-f]{6}[0-9a-f]{16}\d{4}\d{2}$/);
      expect(isValidFileId(id)).toBe(true);
      expect(id.slice(0, 8)).toBe((at / 1000).toString(16));
    }
    expect(new Set(ids).size).toBe(ids.length);
    // the 64 random bits of each id are its own (a pool handing out the same bytes twice fails here)
    expect(new Set(ids.map((id) => id.slice(14, 30))).size).toBe(ids.length);
  });
});
