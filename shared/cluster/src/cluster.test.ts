import { describe, expect, it } from 'vitest';
import { planCluster } from './cluster.ts';

const storagesOf = (perGroup: number) =>
  planCluster({ dir: '/tmp/dsm-plan', groups: ['group001', 'group002'], storagesPerGroup: perGroup }).filter(
    (s) => s.role === 'storage',
  );

describe('planCluster', () => {
  it('lets the members of a group share its folder (storesShared), and gives a group of one its folder to itself', () => {
    const two = storagesOf(2);
    expect(two).toHaveLength(4);
    for (const s of two) expect(s.config.storesShared).toBe(true);
    const g1 = two.filter((s) => s.group === 'group001').map((s) => s.config.storePaths);
    expect(g1[0]).toEqual(g1[1]);
    const one = storagesOf(1);
    expect(one).toHaveLength(2);
    for (const s of one) expect(s.config.storesShared).toBe(false);
    expect(one[0]?.config.storePaths).not.toEqual(one[1]?.config.storePaths);
    // a config of the caller's wins
    const forced = planCluster({
      dir: '/tmp/dsm-plan',
      groups: ['group001'],
      storagesPerGroup: 1,
      extra: { storage: { storesShared: true } },
    }).find((s) => s.role === 'storage');
    expect(forced?.config.storesShared).toBe(true);
  });
});
