import { describe, expect, it } from 'vitest';
import { classifyMismatch, fileBytes, sha256Hex } from './content.ts';
import { checkHistory, type FileRecord, longestOutage, type Op } from './history.ts';

const file = (n: number, size = 10_000): FileRecord => {
  const b = fileBytes(7, n, size);
  return { n, size, sha256: sha256Hex(b) };
};
let seq = 0;
const op = (o: Partial<Op> & Pick<Op, 'kind' | 'file' | 'start' | 'end' | 'outcome'>): Op => ({
  seq: seq++,
  worker: 0,
  ...o,
});

describe('chaos history checker', () => {
  const f1 = file(1);
  const f2 = file(2);
  const files = new Map([
    [1, f1],
    [2, f2],
  ]);
  const up1 = op({ kind: 'upload', file: 1, start: 0, end: 10, outcome: 'ok', sha256: f1.sha256 });
  const good1 = op({
    kind: 'verify',
    file: 1,
    start: 100,
    end: 110,
    outcome: 'ok',
    sha256: f1.sha256,
    bytes: f1.size,
  });

  it('accepts a clean history', () => {
    expect(checkHistory(files, [up1, good1])).toEqual([]);
  });

  it('names file contents by their block tags', () => {
    const b = fileBytes(7, 2, 10_000);
    expect(classifyMismatch(b, 1)).toEqual({ kind: 'foreign', others: [2] });
    b[5000] = (b[5000] as number) ^ 1;
    expect(classifyMismatch(b, 2).kind).toBe('corrupt');
  });

  it('flags a lost acknowledged upload, foreign bytes, a deleted file back and a false not-found', () => {
    const lost = checkHistory(files, [
      up1,
      op({ kind: 'verify', file: 1, start: 100, end: 110, outcome: 'not-found' }),
    ]).map((v) => v.kind);
    expect(lost).toEqual(['acked-reported-missing', 'acked-lost']);
    const foreign = checkHistory(files, [
      up1,
      op({
        kind: 'download',
        file: 1,
        start: 20,
        end: 30,
        outcome: 'ok',
        sha256: f2.sha256,
        bytes: f2.size,
        mismatch: { kind: 'foreign', others: [2] },
      }),
      good1,
    ]).map((v) => v.kind);
    expect(foreign).toEqual(['foreign-bytes']);
    const back = checkHistory(files, [
      up1,
      op({ kind: 'delete', file: 1, start: 20, end: 30, outcome: 'ok' }),
      op({ kind: 'download', file: 1, start: 40, end: 50, outcome: 'ok', sha256: f1.sha256, bytes: f1.size }),
    ]).map((v) => v.kind);
    expect(back).toEqual(['deleted-came-back']);
    // a read overlapping the delete may see either answer
    const overlap = checkHistory(files, [
      up1,
      op({ kind: 'delete', file: 1, start: 20, end: 30, outcome: 'ok' }),
      op({ kind: 'download', file: 1, start: 25, end: 35, outcome: 'ok', sha256: f1.sha256, bytes: f1.size }),
      op({ kind: 'download', file: 1, start: 26, end: 36, outcome: 'not-found' }),
    ]);
    expect(overlap).toEqual([]);
  });

  it('measures the longest outage as the longest failure-containing gap between successes', () => {
    const ops = [
      op({ kind: 'download', file: 1, start: 0, end: 100, outcome: 'ok' }),
      op({ kind: 'download', file: 1, start: 90, end: 150, outcome: 'error' }),
      op({ kind: 'download', file: 1, start: 90, end: 400, outcome: 'ok' }),
      op({ kind: 'download', file: 1, start: 400, end: 1400, outcome: 'ok' }),
    ];
    const o = longestOutage(ops, 'download', 0, 2000);
    expect(o).toMatchObject({ ms: 300, from: 100, to: 400, failures: 1 });
  });
});
