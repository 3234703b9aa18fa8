import { encodePublicId } from '@dsm/client';
import type { MemoryKvStore } from '@dsm/kv/memory';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Stack, startStack } from './test-support.ts';

// The gateway's in-memory caches are filled from request data (user ids, public ids): each
// has a bound from the config and keeps it however many distinct keys arrive.
// (Reads creating no t_router rows: test/src/security/reads-route-nothing.test.ts.)

describe('bounded gateway caches', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack('sqlite+memory', {
      locateCacheMs: 60_000,
      locateCacheMax: 16,
      statCacheMs: 60_000,
      statCacheMax: 8,
    });
  });
  afterAll(async () => {
    await s?.stop();
  });

  it('the locate cache keeps its bound when more users than it holds are located', async () => {
    for (let i = 0; i < 40; i++) await s.gateway.client.locate('tnvideo', `cache-user-${i}`);
    expect(s.gateway.client.locateCacheSize).toBe(16);
  });

  it('the in-process tus store keeps its bound: creations past memoryCacheMaxKeys are 503 problems', async () => {
    const g = await s.startGateway({ memoryCacheMaxKeys: 100 });
    const statuses: number[] = [];
    for (let i = 0; i < 60; i++) {
      const r = await fetch(`${g.url}/tus/`, {
        method: 'POST',
        headers: { 'Tus-Resumable': '1.0.0', 'Upload-Length': '10' },
      });
      statuses.push(r.status);
      if (r.status !== 201) {
        expect(r.headers.get('content-type')).toBe('application/problem+json');
        expect(((await r.json()) as { code: string }).code).toBe('DSM_ERR_CACHE_UNAVAILABLE');
      }
    }
    expect(statuses.filter((x) => x === 201).length).toBeGreaterThan(20);
    expect(statuses).toContain(503);
    expect((g.kv as MemoryKvStore).size).toBeLessThanOrEqual(100);
  });

  it('the stat cache keeps its bound when more files than it holds are read', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 20; i++) {
      const r = await fetch(`${s.gateway.url}/files`, { method: 'POST', body: `file ${i}` });
      ids.push(((await r.json()) as { id: string }).id);
    }
    for (const id of ids) expect((await fetch(`${s.gateway.url}/files/${id}/meta`)).status).toBe(200);
    expect(s.gateway.core.statCacheSize).toBe(8);
    // a made-up id is not cached
    const bogus = encodePublicId({ appId: 'tnvideo', userId: 'tnv001', fileId: 'nope' });
    expect((await fetch(`${s.gateway.url}/files/${bogus}`)).status).toBe(404);
    expect(s.gateway.core.statCacheSize).toBe(8);
  });
});
