import { createHash } from 'node:crypto';
import { RemoteError } from '@dsm/client';
import { Errno, parseAddress, toHex } from '@dsm/packets';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BACKEND_NAMES,
  collect,
  patternChunks,
  patternSource,
  startTestCluster,
  type TestCluster,
} from './helpers.ts';

async function sha(stream: AsyncIterable<Uint8Array>): Promise<string> {
  const h = createHash('sha256');
  for await (const c of stream) h.update(c);
  return h.digest('hex');
}

describe.each(BACKEND_NAMES)('whole cluster on %s', (backend) => {
  let t: TestCluster;
  beforeAll(async () => {
    t = await startTestCluster(backend);
    await t.waitActive(4);
  }, 90_000);
  afterAll(async () => {
    await t?.stop();
  });

  it('uploads a file and reads it back whole and in ranges from every member of the group', async () => {
    const size = 3 * 1024 * 1024 + 17;
    const expected = await sha(patternChunks(size, 7));
    const up = await t.client.upload({
      appId: 'tnvideo',
      userId: `u-${backend}-1`,
      source: patternSource(size, 7),
    });
    expect(up.stat.size).toBe(size);
    expect(up.group).toMatch(/^group00[12]$/);
    expect(toHex(up.stat.sha256)).toBe(expected);
    const located = await t.client.locate('tnvideo', `u-${backend}-1`, true);
    expect(located.addrs.length).toBe(2);
    for (const addr of located.addrs) {
      const whole = await t.client.storage.download(addr, { ...up.ids, offset: 0, size: 0 });
      expect(whole.length).toBe(size);
      expect(await sha(whole.stream)).toBe(expected);
      const all = await collect((await t.client.download(up.ids)).stream);
      const part = await t.client.storage.download(addr, { ...up.ids, offset: 1_000_000, size: 4096 });
      expect(Buffer.compare(await collect(part.stream), all.subarray(1_000_000, 1_004_096))).toBe(0);
    }
  });

  it('routes a user to one group, stickily, and every tracker answers the same', async () => {
    const user = `sticky-${backend}`;
    const answers = await Promise.all(
      t.cluster.addresses('tracker').map(async (a) => {
        const c = t.client.tracker;
        const pool = c.pool;
        const { TrackerClient } = await import('@dsm/client');
        return new TrackerClient(pool, [parseAddress(a)]).storagesFor('tnvideo', user);
      }),
    );
    const groups = new Set(answers.map((r) => r.group));
    expect(groups.size).toBe(1);
    const again = await t.client.locate('tnvideo', user, true);
    expect(again.group).toBe(answers[0]?.group);
  });

  it('deletes a file: size, stat and download answer not found afterwards', async () => {
    const up = await t.client.upload({
      appId: 'tnvideo',
      userId: 'del-user',
      source: patternSource(1000, 3),
    });
    expect(await t.client.size(up.ids)).toBe(1000);
    await t.client.delete(up.ids);
    for (const op of [
      () => t.client.size(up.ids),
      () => t.client.stat(up.ids),
      () => t.client.download(up.ids),
    ]) {
      const e = await op().catch((x) => x);
      expect(e).toBeInstanceOf(RemoteError);
      expect(e.errno).toBe(Errno.NOT_FOUND);
    }
  });

  it('refuses a range past the end with a defined error reply', async () => {
    const up = await t.client.upload({
      appId: 'tnvideo',
      userId: 'range-user',
      source: patternSource(100, 9),
    });
    const e = await t.client.download(up.ids, 101, 0).catch((x) => x);
    expect(e).toBeInstanceOf(RemoteError);
    expect(e.errno).toBe(Errno.RANGE);
    expect(e.message).toContain('Invalid Offset, 101 is NOT Between 0 AND 100');
    const ok = await t.client.download(up.ids, 100, 0);
    expect(ok.length).toBe(0);
    expect((await collect(ok.stream)).length).toBe(0);
  });

  it('lists storages in the group text and the status with capacity', async () => {
    const text = await t.client.tracker.groupsText();
    expect(text).toMatch(/^COUNT OF GROUPS: 2\n/);
    expect(text.match(/STATUS: ACTIVE/g)?.length).toBe(4);
    const s = await t.client.tracker.status();
    const storages = s.groups.flatMap((g) => g.storages);
    expect(storages).toHaveLength(4);
    for (const st of storages) {
      expect(st.state).toBe('ACTIVE');
      expect(st.totalBytes).toBeGreaterThan(0);
      expect(st.freeBytes).toBeGreaterThan(0);
    }
  });
});
