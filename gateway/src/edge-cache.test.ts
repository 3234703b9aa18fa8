import { describe, expect, it } from 'vitest';
import { entryOf, type GatewayLog } from './core.ts';
import { EdgeCache, type EdgeCacheApi, edgeCacheSchema } from './edge-cache.ts';

// The edge cache when Cloudflare's Cache API (which cannot exist here; the Miniflare tests in
// worker-edge.test.ts use workerd's real one) hangs or fails: every wait is bounded, a lookup
// that does not come back is a miss and the storage answers, nothing throws to the request.

const ids = { appId: 'tnvideo', userId: 'u1', fileId: 'M00/00/00/x.bin' };
const stat = { size: 10, mtimeMs: 1_700_000_000_000, sha256: new Uint8Array(32).fill(7), contentType: '' };

function logSink() {
  const lines: string[] = [];
  const at = (obj: object, msg?: string) => {
    const err = (obj as { err?: unknown }).err;
    lines.push(`${msg} ${err instanceof Error ? err.message : ''}`);
  };
  const log: GatewayLog = { debug: at, info: at, warn: at, error: at };
  return { log, lines };
}

const never = <T>() => new Promise<T>(() => {});
const hanging: EdgeCacheApi = { match: never, put: never, delete: never };
const failing: EdgeCacheApi = {
  match: () => Promise.reject(new Error('cache down')),
  put: () => Promise.reject(new Error('cache down')),
  delete: () => Promise.reject(new Error('cache down')),
};

describe('EdgeCache over a Cache API that hangs or fails', () => {
  for (const [name, api] of [
    ['hangs', hanging],
    ['fails', failing],
  ] as const) {
    it(`gives the storage's stat, misses slices and purges without throwing when the Cache API ${name}`, async () => {
      const { log, lines } = logSink();
      const edge = new EdgeCache(edgeCacheSchema.parse({}), api, {
        keyOrigin: 'https://gw.example',
        log,
        timeoutMs: 150,
      });
      const t0 = performance.now();
      let reads = 0;
      const read = async () => {
        reads++;
        return entryOf('PUBLICID', ids, stat);
      };
      // two callers at once share one storage read
      const [a, b] = await Promise.all([edge.load('PUBLICID', ids, read), edge.load('PUBLICID', ids, read)]);
      expect(reads).toBe(1);
      expect(a).toBe(b);
      expect(a.stat.size).toBe(10);
      const key = { publicId: 'PUBLICID', etag: a.etag, sliceBytes: 2 * 1024 * 1024, index: 0, length: 10 };
      expect(await edge.get(key)).toBeNull();
      await edge.put(key, new Uint8Array(10));
      await edge.purge('PUBLICID');
      // stat lookup + stat put, slice lookup, slice put, purge: each waited at most the timeout
      expect(performance.now() - t0).toBeLessThan(150 * 6 + 500);
      expect(lines.some((l) => /could not keep a stat/.test(l))).toBe(true);
      expect(lines.some((l) => /could not read a slice/.test(l))).toBe(true);
      expect(lines.some((l) => /could not purge/.test(l))).toBe(true);
      if (name === 'hangs') expect(lines.join('\n')).toMatch(/did not answer a stat lookup within 150 ms/);
    });
  }

  it('refuses a slice size outside 1..8 MiB and a stat lifetime under 2 s', () => {
    expect(() => edgeCacheSchema.parse({ sliceBytes: 512 * 1024 })).toThrow();
    expect(() => edgeCacheSchema.parse({ sliceBytes: 9 * 1024 * 1024 })).toThrow();
    expect(() => edgeCacheSchema.parse({ statTtlMs: 1000 })).toThrow();
    expect(() => edgeCacheSchema.parse({ slices: 1 })).toThrow();
    expect(edgeCacheSchema.parse({})).toEqual({
      enabled: true,
      sliceBytes: 2 * 1024 * 1024,
      statTtlMs: 60_000,
      memoryBytes: 16 * 1024 * 1024,
    });
  });
});
