import { describe, expect, it } from 'vitest';
import { parsePendingHeals } from './heal-info.ts';

describe('parsePendingHeals', () => {
  it('sums the entries of the bricks that answer', () => {
    const text = [
      'Brick 10.213.0.15:/b/brick',
      '/dsm/00/01/a.bin',
      'Status: Connected',
      'Number of entries: 2',
      '',
      'Brick 10.213.0.16:/b/brick',
      'Status: Transport endpoint is not connected',
      'Number of entries: -',
      '',
      'Brick 10.213.0.17:/b/brick',
      'Status: Connected',
      'Number of entries: 3',
    ].join('\n');
    expect(parsePendingHeals(text)).toBe(5);
    expect(parsePendingHeals('Brick a:/b\nStatus: Connected\nNumber of entries: 0\n')).toBe(0);
  });

  it('is -1 when there is no brick section (not a GlusterFS volume)', () => {
    expect(parsePendingHeals('Volume x does not exist\n')).toBe(-1);
    expect(parsePendingHeals('')).toBe(-1);
  });
});
