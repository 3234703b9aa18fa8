import { describe, expect, it } from 'vitest';
import { Stores } from './store.ts';

describe('Stores.resolveRecorded (its answers kept for recent paths)', () => {
  const stores = new Stores(['/srv/a', '/srv/b'], 'host-23000', '/etc/dsm');
  const cases: [string, string | null][] = [
    ['/srv/a/00/01/f1', '/srv/a/00/01/f1'],
    ['/srv/b/x', '/srv/b/x'],
    ['../../srv/a/y', '/srv/a/y'], // a seed row's relative path, from the config folder
    ['/srv/a', null], // a store itself is no file
    ['/srv/a/../b/../../etc/passwd', null],
    ['/srv/ab/f', null], // a sibling whose name starts like a store
    ['/etc/passwd', null],
    ['data/f', null], // relative, but outside the stores
    ['/srv/a/f\u0000.txt', null],
    ['', null],
  ];

  it('gives the same answer when asked again, after other paths pushed it out, and for hostile paths', () => {
    for (const [p, want] of cases) expect(stores.resolveRecorded(p), p).toBe(want);
    for (const [p, want] of cases) expect(stores.resolveRecorded(p), `${p} (kept)`).toBe(want);
    // more paths than are kept: the first answers are computed anew, and still the same
    for (let i = 0; i < 5000; i++) stores.resolveRecorded(i % 2 ? `/srv/a/n${i}` : `/tmp/n${i}`);
    for (const [p, want] of cases) expect(stores.resolveRecorded(p), `${p} (again)`).toBe(want);
    expect(stores.resolveRecorded('/srv/a/n4999')).toBe('/srv/a/n4999');
    expect(stores.resolveRecorded('/tmp/n4998')).toBeNull();
    expect(stores.resolveRecorded(null)).toBeNull();
    expect(stores.resolveRecorded(undefined)).toBeNull();
  });
});
