import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger, DsmError, ErrorCode } from '@dsm/common';
import {
  type BeatExt,
  Command,
  decodeBeatExt,
  decodeJoinExt,
  Errno,
  type JoinExt,
  PROTOCOL_VERSION,
} from '@dsm/packets';
import { ProtocolServer } from '@dsm/server';
import { until } from '@dsm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type StorageNode, startStorage } from './storage.ts';
import { TMP_DIR } from './store.ts';
import { idStub } from './test-support.ts';

const log = createLogger('tracker-link-test');

describe('tracker links', () => {
  let dir = '';
  let tracker: ProtocolServer;
  let trackerPort = 0;
  const joins: JoinExt[] = [];
  const beats: BeatExt[] = [];
  let refuseBeats = false;
  let node: StorageNode;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'dsm-storage-tl-'));
    tracker = new ProtocolServer({
      name: 'fake-tracker',
      hostname: 'tracker',
      replyCommand: Command.TRACKER_REPLY,
      log,
      handlers: {
        [Command.TRACKER_JOIN_EXT]: async (ctx) => {
          joins.push(decodeJoinExt(ctx.body));
          await ctx.reply();
        },
        [Command.TRACKER_BEAT_EXT]: async (ctx) => {
          if (refuseBeats) {
            throw new DsmError(ErrorCode.NOT_JOINED, 'Mark Storage As ACTIVE Fail...', Errno.NOT_JOINED);
          }
          beats.push(decodeBeatExt(ctx.body));
          await ctx.reply();
        },
      },
    });
    trackerPort = (await tracker.listen(0)).port;
    // A raw object (not through loadConfig): startStorage validates and fills defaults itself.
    node = await startStorage(
      {
        configDir: dir,
        listen: '127.0.0.1:0',
        hostname: 'linked',
        group: 'groupX',
        storePaths: ['s'],
        // The second tracker is down: its loop keeps retrying without disturbing the first.
        trackers: [`127.0.0.1:${trackerPort}`, '127.0.0.1:1'],
        database: `sqlite:${join(dir, 'm.db')}`,
        beatIntervalMs: 60,
        joinSecret: 's3cret',
        storeProbeIntervalMs: 100,
      },
      { log, idSource: idStub().source },
    );
  });

  afterAll(async () => {
    await node?.close();
    await tracker?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('joins with JOIN_EXT, then beats with BEAT_EXT on the same connection', async () => {
    await until(() => joins.length >= 1 && beats.length >= 3, 5000, 20, 'a join and beats');
    const j = joins[0] as JoinExt;
    expect(j).toMatchObject({
      version: '1.0',
      group: 'groupX',
      hostname: 'linked',
      port: node.port, // advertisePort 0 = the bound port
      protocolVersion: PROTOCOL_VERSION,
      secret: 's3cret',
      load: 0,
    });
    expect(j.totalBytes).toBeGreaterThan(0);
    expect(j.freeBytes).toBeGreaterThan(0);
    expect(Math.abs(j.joinTime - Date.now() / 1000)).toBeLessThan(30);
    expect(j.startTime).toBeLessThanOrEqual(j.joinTime);
    expect(beats[0]).toMatchObject({
      group: 'groupX',
      hostname: 'linked',
      port: node.port,
      pendingHeals: -1,
      writable: true,
    });
    const [up, down] = node.trackerLinks;
    expect(up).toMatchObject({ tracker: `127.0.0.1:${trackerPort}`, status: 'joined', joins: 1 });
    expect(up?.beats).toBeGreaterThanOrEqual(3);
    await until(() => (down?.failures ?? 0) >= 1, 5000, 20, 'the dead tracker to be tried');
    expect(down?.status).not.toBe('joined');
    expect(down?.lastError).toContain('127.0.0.1:1');
  });

  it('an error reply to a heartbeat (tracker restarted) makes it join again', async () => {
    refuseBeats = true;
    const [up] = node.trackerLinks;
    await until(() => (up?.failures ?? 0) >= 1, 5000, 20, 'a refused beat');
    expect(up?.lastError).toContain('Mark Storage As ACTIVE Fail');
    refuseBeats = false;
    await until(() => joins.length >= 2 && up?.status === 'joined', 5000, 20, 'a new join');
    expect(up?.joins).toBeGreaterThanOrEqual(2);
  });

  it('beats right after joining, not one beat interval later (ACTIVE at once on a new tracker)', async () => {
    const other = await startStorage(
      {
        configDir: join(dir, 'eager'),
        listen: '127.0.0.1:0',
        hostname: 'eager',
        group: 'groupX',
        storePaths: ['s'],
        trackers: [`127.0.0.1:${trackerPort}`],
        database: `sqlite:${join(dir, 'eager.db')}`,
        beatIntervalMs: 60_000,
        joinSecret: 's3cret',
      },
      { log, idSource: idStub().source },
    );
    try {
      await until(() => beats.some((b) => b.hostname === 'eager'), 5000, 20, 'the first beat');
      expect(joins.filter((j) => j.hostname === 'eager')).toHaveLength(1);
      expect(other.trackerLinks[0]?.beats).toBe(1);
    } finally {
      await other.close();
    }
  });

  it('a store that refuses writes is reported in the next heartbeat, and its recovery too', async () => {
    // the probe writes `.tmp/<owner>.probe`: a folder in its place makes it fail (EISDIR)
    const probeFile = join(node.storePaths[0] as string, TMP_DIR, `linked-${node.port}.probe`);
    // (a probe in flight has the file there for a moment: EEXIST, try again)
    const inPlace = () => {
      try {
        mkdirSync(probeFile);
        return true;
      } catch {
        return false;
      }
    };
    await until(inPlace, 2000, 5, 'a folder in place of the probe file');
    try {
      await until(() => beats.at(-1)?.writable === false, 5000, 20, 'a beat saying "not writable"');
    } finally {
      rmSync(probeFile, { recursive: true, force: true });
    }
    await until(() => beats.at(-1)?.writable === true, 5000, 20, 'a beat saying "writable" again');
  });

  it('stops cleanly on close', async () => {
    const t0 = Date.now();
    await node.close();
    expect(Date.now() - t0).toBeLessThan(3000);
    for (const s of node.trackerLinks) expect(s.status).toBe('stopped');
    const count = joins.length + beats.length;
    await new Promise((r) => setTimeout(r, 200));
    expect(joins.length + beats.length).toBe(count);
  });
});
