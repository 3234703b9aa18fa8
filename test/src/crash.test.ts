import { existsSync, readdirSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { newFileId, RemoteError } from '@dsm/client';
import { createDb } from '@dsm/db';
import { parseAddress } from '@dsm/packets';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { collect, finalFiles, patternSource, startTestCluster, type TestCluster } from './helpers.ts';

function tempFiles(dir: string): string[] {
  return existsSync(dir) ? readdirSync(dir) : [];
}

async function rowsFor(t: TestCluster, fileId: string): Promise<number> {
  const h = createDb(t.databases.storage);
  try {
    let n = 0;
    for (const table of ['t_file_01', 't_file_02', 't_file_03'] as const) {
      const r = await h.db.selectFrom(table).select('id').where('id', '=', fileId).execute();
      n += r.length;
    }
    return n;
  } finally {
    await h.close();
  }
}

describe('crash safety (kill -9)', () => {
  let t: TestCluster;
  const BEAT = 300;
  beforeAll(async () => {
    t = await startTestCluster('sqlite+memory', { trackers: 1, groups: ['group001'], storagesPerGroup: 2 });
    await t.waitActive(2);
  }, 90_000);
  afterAll(async () => {
    await t?.stop();
  });

  it('a storage killed mid-upload leaves no row, no file and, after restart, no temp file', async () => {
    const victim = t.cluster.nodes.get('group001-s1')!;
    const dataDir = join(t.dir, 'data', 'group001');
    const tmpDir = join(dataDir, '.tmp', `${hostname()}-${victim.port}`);
    const before = finalFiles(dataDir).length;
    const fileId = newFileId();
    const size = 64 * 1024 * 1024;
    let sent = 0;
    let killed: Promise<void> | null = null;
    const upload = t.client.storage
      .upload(
        { host: victim.host, port: victim.port },
        { appId: 'tnvideo', userId: 'crash-user', fileId },
        {
          size,
          async *open() {
            for await (const c of patternSource(size, 5, 1024 * 1024).open()) {
              yield c;
              sent += c.length;
              if (sent === 8 * 1024 * 1024) killed = t.cluster.kill(victim.name);
              if (sent > 8 * 1024 * 1024) await new Promise((r) => setTimeout(r, 20));
            }
          },
        },
      )
      .then(
        () => 'completed',
        (e) => e,
      );
    const outcome = await upload;
    await killed;
    expect(outcome).not.toBe('completed');
    expect(await rowsFor(t, fileId)).toBe(0);
    expect(finalFiles(dataDir).length).toBe(before);
    // the upload's claim on its id was its temp file under a second name (LinkClaim): held
    // while the storage was dead (no other member may take the id before it expires) ...
    const claim = join(dataDir, '.partial', `${fileId}.upload.lock`);
    expect(existsSync(claim)).toBe(true);
    await t.cluster.startNode(victim.name);
    expect(tempFiles(tmpDir)).toEqual([]);
    // ... and gone with it at the restart (it would hold the 8 MiB received)
    expect(existsSync(claim)).toBe(false);
    await t.waitActive(2);
  });

  it('a killed storage is marked offline within 3 heartbeats and its group keeps serving', async () => {
    const up = await t.client.upload({
      appId: 'tnvideo',
      userId: 'failover-user',
      source: patternSource(200_000, 11),
    });
    const whole = await collect((await t.client.download(up.ids)).stream);
    const victim = t.cluster.nodes.get('group001-s2')!;
    const killedAt = Date.now();
    await t.cluster.kill(victim.name);
    const tracker = parseAddress(t.cluster.addresses('tracker')[0]!);
    let offlineAfter = -1;
    while (Date.now() - killedAt < 10 * BEAT) {
      const s = await t.client.tracker.status(tracker);
      const st = s.groups.flatMap((g) => g.storages).find((x) => x.port === victim.port);
      if (st?.state === 'OFFLINE') {
        offlineAfter = Date.now() - killedAt;
        break;
      }
      await new Promise((r) => setTimeout(r, 25));
    }
    expect(offlineAfter).toBeGreaterThanOrEqual(0);
    expect(offlineAfter).toBeLessThanOrEqual(3 * BEAT);
    for (let i = 0; i < 5; i++) {
      const again = await collect((await t.client.download(up.ids)).stream);
      expect(Buffer.compare(again, whole)).toBe(0);
    }
    const located = await t.client.locate('tnvideo', 'failover-user', true);
    expect(located.addrs.map((a) => a.port)).not.toContain(victim.port);
    await t.cluster.startNode(victim.name);
    await t.waitActive(2);
  });

  it('a restarted tracker rebuilds its registry within one heartbeat interval', async () => {
    const name = 'tracker1';
    await t.cluster.stopNode(name);
    await t.cluster.startNode(name);
    const started = Date.now();
    await t.waitActive(2, 5000);
    // one heartbeat interval, plus the reconnect pause of the storages' links
    expect(Date.now() - started).toBeLessThan(BEAT + 2500);
    const e = await t.client
      .size({ appId: 'tnvideo', userId: 'nobody', fileId: 'no-such-file' })
      .catch((x) => x);
    expect(e).toBeInstanceOf(RemoteError);
  });
});
