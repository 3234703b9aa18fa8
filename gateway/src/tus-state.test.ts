import { request } from 'node:http';
import type { KvStore } from '@dsm/kv';
import { MemoryKvStore } from '@dsm/kv/memory';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunningGateway } from './node.ts';
import { patternBytes, type Stack, startStack } from './test-support.ts';

// tus state that unauthenticated traffic touches: the sweeper decides under the upload's lock,
// HEAD never deletes, and every key the gateway writes for an upload expires.

/** A real in-process store that records the TTL of each write and can run code before one call. */
class WatchedKv implements KvStore {
  readonly inner = new MemoryKvStore();
  readonly ttls = new Map<string, number | undefined>();
  /** Runs (once) before the next setIfAbsent of a key matching `pattern`. */
  before: { pattern: RegExp; run: () => Promise<void> } | undefined;

  get(key: string) {
    return this.inner.get(key);
  }
  async set(key: string, value: string, ttlMs?: number) {
    this.ttls.set(key, ttlMs);
    return this.inner.set(key, value, ttlMs);
  }
  async setIfAbsent(key: string, value: string, ttlMs: number) {
    const hook = this.before;
    if (hook?.pattern.test(key)) {
      this.before = undefined;
      await hook.run();
    }
    return this.inner.setIfAbsent(key, value, ttlMs);
  }
  del(key: string) {
    return this.inner.del(key);
  }
  delIfValue(key: string, value: string) {
    return this.inner.delIfValue(key, value);
  }
  async expire(key: string, ttlMs: number) {
    const ok = await this.inner.expire(key, ttlMs);
    if (ok) this.ttls.set(key, ttlMs);
    return ok;
  }
  incrBy(key: string, n: number) {
    return this.inner.incrBy(key, n);
  }
  close() {
    return this.inner.close();
  }
}

const TUS = { 'Tus-Resumable': '1.0.0' };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('tus state', () => {
  let s: Stack;
  let kv: WatchedKv;
  let g: RunningGateway;
  beforeAll(async () => {
    s = await startStack('sqlite+memory');
    kv = new WatchedKv();
    g = await s.startGateway({ tusExpiryMs: 1000, tusSweepIntervalMs: 0 }, kv);
  });
  afterAll(async () => {
    await s?.stop();
    await kv?.close();
  });

  const create = async (length: number) => {
    const r = await fetch(`${g.url}/tus/`, {
      method: 'POST',
      headers: { ...TUS, 'Upload-Length': String(length) },
    });
    expect(r.status).toBe(201);
    return r.headers.get('location') as string;
  };
  const patch = (url: string, offset: number, body: Uint8Array<ArrayBuffer>) =>
    fetch(url, {
      method: 'PATCH',
      headers: { ...TUS, 'Upload-Offset': String(offset), 'Content-Type': 'application/offset+octet-stream' },
      body,
    });
  const idOf = (url: string) => url.slice(url.lastIndexOf('/') + 1);

  it('HEAD of an expired upload answers 410 and deletes nothing (state and partial stay for the sweeper)', async () => {
    const url = await create(5000);
    expect((await patch(url, 0, patternBytes(1000))).status).toBe(204);
    const files = s.dataFiles();
    await sleep(1100);
    const h = await fetch(url, { method: 'HEAD', headers: TUS });
    expect(h.status).toBe(410);
    expect(await kv.get(`gw:tus:u:${idOf(url)}`)).not.toBeNull();
    expect(s.dataFiles()).toEqual(files);
    // the sweeper, under the upload's lock, is what deletes it
    expect(await g.tus.sweep()).toBeGreaterThanOrEqual(1);
    expect(await kv.get(`gw:tus:u:${idOf(url)}`)).toBeNull();
    expect(s.dataFiles().length).toBe(files.length - 1);
  });

  it('the sweeper decides under the lock: a PATCH that ends between its read and its lock keeps the upload', async () => {
    const url = await create(5000);
    // a PATCH that starts before the upload expires and whose body is still arriving after
    const req = request(url, {
      method: 'PATCH',
      headers: {
        ...TUS,
        'Upload-Offset': '0',
        'Content-Type': 'application/offset+octet-stream',
        'Content-Length': '2000',
      },
    });
    const answered = new Promise<number>((resolve, reject) => {
      req.on('response', (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
    });
    req.write(patternBytes(1000));
    await sleep(1100);
    // the sweeper has read the state (expired by then) and asks for the lock: the PATCH ends first
    let resumed = 0;
    kv.before = {
      pattern: new RegExp(`^gw:tus:lock:${idOf(url)}$`),
      run: async () => {
        req.end(patternBytes(1000, 2));
        resumed = await answered;
      },
    };
    await g.tus.sweep();
    expect(resumed).toBe(204);
    const h = await fetch(url, { method: 'HEAD', headers: TUS });
    expect(h.status).toBe(200);
    expect(h.headers.get('upload-offset')).toBe('2000');
  });

  it('prototype names in tus headers are plain names: metadata keys are kept, checksum names are 400', async () => {
    const b64 = (x: string) => Buffer.from(x).toString('base64');
    const r = await fetch(`${g.url}/tus/`, {
      method: 'POST',
      headers: {
        ...TUS,
        'Upload-Length': '10',
        'Upload-Metadata': `constructor ${b64('c')},__proto__ ${b64('p')},toString,filename ${b64('a.mp4')}`,
      },
    });
    expect(r.status).toBe(201);
    const url = r.headers.get('location') as string;
    for (const name of ['constructor', '__proto__', 'toString', 'hasOwnProperty']) {
      const p = await fetch(url, {
        method: 'PATCH',
        headers: {
          ...TUS,
          'Upload-Offset': '0',
          'Content-Type': 'application/offset+octet-stream',
          'Upload-Checksum': `${name} AAAA`,
        },
        body: 'x',
      });
      expect(p.status, name).toBe(400);
      expect(p.headers.get('content-type')).toBe('application/problem+json');
    }
  });

  it('every key written for an upload has a TTL (state, index, lock)', async () => {
    const url = await create(3000);
    expect((await patch(url, 0, patternBytes(1000))).status).toBe(204);
    const id = idOf(url);
    const written = [...kv.ttls.entries()].filter(
      ([k]) => k.startsWith('gw:tus:u:') || k.startsWith('gw:tus:idx:'),
    );
    expect(written.some(([k]) => k.startsWith('gw:tus:idx:'))).toBe(true);
    expect(written.some(([k]) => k === `gw:tus:u:${id}`)).toBe(true);
    for (const [k, ttl] of written) expect(ttl, k).toBeGreaterThan(0);
  });
});
