import { Errno } from '@dsm/packets';
import { describe, expect, it } from 'vitest';
import { RemoteError } from './connection.ts';
import { isRetryable, isRetryableOnTracker, tryEach } from './failover.ts';

describe('failover', () => {
  const a1 = { host: '127.0.0.1', port: 1 };
  const a2 = { host: '127.0.0.1', port: 2 };

  it('asks the next tracker after "no storage" (a restarted tracker knows no storage yet)', async () => {
    const noStorage = new RemoteError(Errno.NO_STORAGE, '[t1] Get Storage Address Fail...');
    expect(isRetryable(noStorage)).toBe(false);
    expect(isRetryableOnTracker(noStorage)).toBe(true);
    expect(isRetryableOnTracker(new RemoteError(Errno.NOT_FOUND, 'x'))).toBe(false);
    const asked: number[] = [];
    const r = await tryEach(
      [a1, a2],
      async (a) => {
        asked.push(a.port);
        if (a.port === 1) throw noStorage;
        return 'ok';
      },
      0,
      isRetryableOnTracker,
    );
    expect([r, asked]).toEqual(['ok', [1, 2]]);
    // the default predicate stops at the first non-retryable error
    await expect(tryEach([a1, a2], async () => Promise.reject(noStorage))).rejects.toBe(noStorage);
  });
});
