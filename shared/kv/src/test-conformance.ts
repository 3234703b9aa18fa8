import { setTimeout as sleep } from 'node:timers/promises';
import { DsmError, ErrorCode } from '@dsm/common';
import { rejection } from '@dsm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KvStore } from './kv-store.ts';

// The one conformance suite every KvStore runs (`@dsm/kv/test-conformance`): the memory and
// Redis stores in kv.test.ts, the Worker's Durable Object store in gateway/src/worker-do.test.ts.

export interface KvBackend {
  name: string;
  /** A store to test (each call a new client of the same backend). */
  open(): Promise<KvStore>;
  cleanup(): Promise<void>;
  /**
   * The short TTL the suite waits out (default 150 ms): longer for a store a few calls to which
   * may take that long on a loaded machine (the Durable Object store through Miniflare's proxy).
   */
  ttlMs?: number;
}

export function kvConformance(backend: KvBackend): void {
  const TTL = backend.ttlMs ?? 150;
  describe(`KvStore conformance: ${backend.name}`, () => {
    let kv: KvStore;
    let n = 0;
    /** A fresh key per use, so tests do not see each other's data. */
    const key = (name: string) => `${name}:${++n}`;

    beforeAll(async () => {
      kv = await backend.open();
    });

    afterAll(async () => {
      await kv?.close();
      await backend.cleanup();
    });

    it('get / set / del', async () => {
      const k = key('basic');
      expect(await kv.get(k)).toBeNull();
      await kv.set(k, 'v1');
      expect(await kv.get(k)).toBe('v1');
      await kv.set(k, 'v2 with spaces and ünïcödé');
      expect(await kv.get(k)).toBe('v2 with spaces and ünïcödé');
      await kv.del(k);
      expect(await kv.get(k)).toBeNull();
      await kv.del(k); // deleting a missing key is fine
      await kv.set(k, '');
      expect(await kv.get(k)).toBe('');
    });

    it('TTLs expire; a set without TTL clears the TTL', async () => {
      const a = key('ttl');
      const b = key('ttl');
      await kv.set(a, 'x', TTL);
      await kv.set(b, 'y', TTL);
      await kv.set(b, 'y2'); // no TTL now
      expect(await kv.get(a)).toBe('x');
      await sleep(TTL + 100);
      expect(await kv.get(a)).toBeNull();
      expect(await kv.get(b)).toBe('y2');
    });

    it('setIfAbsent: only the first wins; after expiry it can be set again', async () => {
      const k = key('lock');
      const results = await Promise.all(['a', 'b', 'c', 'd'].map((v) => kv.setIfAbsent(k, v, TTL)));
      expect(results.filter(Boolean)).toHaveLength(1);
      const winner = ['a', 'b', 'c', 'd'][results.indexOf(true)];
      expect(await kv.get(k)).toBe(winner);
      expect(await kv.setIfAbsent(k, 'late', TTL)).toBe(false);
      expect(await kv.get(k)).toBe(winner);
      await sleep(TTL + 100);
      expect(await kv.get(k)).toBeNull();
      expect(await kv.setIfAbsent(k, 'again', 5000)).toBe(true);
      expect(await kv.get(k)).toBe('again');
    });

    it('delIfValue deletes only a matching value', async () => {
      const k = key('owned');
      expect(await kv.delIfValue(k, 'me')).toBe(false);
      await kv.set(k, 'me');
      expect(await kv.delIfValue(k, 'someone-else')).toBe(false);
      expect(await kv.get(k)).toBe('me');
      expect(await kv.delIfValue(k, 'me')).toBe(true);
      expect(await kv.get(k)).toBeNull();
      expect(await kv.delIfValue(k, 'me')).toBe(false);
    });

    it('incrBy counts from 0, keeps the TTL, rejects non-integers', async () => {
      const k = key('counter');
      expect(await kv.incrBy(k, 1)).toBe(1);
      expect(await kv.incrBy(k, 41)).toBe(42);
      expect(await kv.incrBy(k, -50)).toBe(-8);
      expect(await kv.get(k)).toBe('-8');
      expect(await kv.incrBy(k, 2 ** 40)).toBe(2 ** 40 - 8);

      const t = key('counter-ttl');
      await kv.set(t, '10', TTL);
      expect(await kv.incrBy(t, 5)).toBe(15);
      await sleep(TTL + 100);
      expect(await kv.get(t)).toBeNull();

      const s = key('not-a-number');
      await kv.set(s, 'abc');
      const e = await rejection(kv.incrBy(s, 1));
      expect(e).toMatchObject({ code: ErrorCode.BAD_INPUT });
      expect(await rejection(kv.incrBy(s, 1.5))).toBeInstanceOf(DsmError);
    });

    it('expire sets a TTL on an existing key only', async () => {
      const k = key('exp');
      expect(await kv.expire(k, TTL)).toBe(false);
      await kv.set(k, 'v');
      expect(await kv.expire(k, TTL)).toBe(true);
      expect(await kv.get(k)).toBe('v');
      await sleep(TTL + 100);
      expect(await kv.get(k)).toBeNull();
      expect(await kv.expire(k, TTL)).toBe(false);

      // Extending a TTL keeps the key alive.
      const l = key('exp-extend');
      await kv.set(l, 'v', TTL);
      await sleep(TTL / 2);
      expect(await kv.expire(l, 5000)).toBe(true);
      await sleep(TTL);
      expect(await kv.get(l)).toBe('v');
    });

    it('rejects bad TTLs', async () => {
      for (const ttl of [0, -1, Number.NaN]) {
        const e = await rejection(kv.set(key('bad-ttl'), 'v', ttl));
        expect(e).toMatchObject({ code: ErrorCode.BAD_INPUT });
      }
    });

    it('after close, calls reject with CACHE_UNAVAILABLE', async () => {
      const other = await backend.open();
      await other.set(key('closing'), 'v');
      await other.close();
      await other.close();
      const e = await rejection(other.get('x'));
      expect(e).toMatchObject({ code: ErrorCode.CACHE_UNAVAILABLE });
    });
  });
}
