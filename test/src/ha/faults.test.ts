/**
 * Fault scenarios against real keepalived + GlusterFS + dsm node processes in network
 * namespaces (lab.ts). One lab for the whole file: the scenarios run one after another and
 * each puts the cluster back the way it found it. Every figure is printed and asserted;
 * docs/reliability.md records them.
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { formatStatus } from '@dsm/cli';
import type { DsmClient } from '@dsm/client';
import type { FileIds } from '@dsm/packets';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { collect, patternSource } from '../helpers.ts';
import {
  BEAT_MS,
  BEAT_TIMEOUT_MS,
  ID_VIP,
  ipOf,
  Lab,
  STORAGE_HOSTS,
  STORAGE_PORT,
  SWEEP_MS,
  sleep,
  TRACKER_VIP,
  until,
} from './lab.ts';

const APP = 'tnvideo';
let lab: Lab;
const report: string[] = [];
const figure = (s: string) => {
  report.push(s);
  console.log(`[ha] ${s}`);
};

beforeAll(async () => {
  const t0 = Date.now();
  lab = await Lab.up((s) => console.log(`[ha lab] ${s}`));
  figure(`lab up in ${Date.now() - t0} ms`);
}, 180_000);

afterAll(async () => {
  await lab?.down();
  console.log(`[ha] figures:\n  ${report.join('\n  ')}`);
}, 60_000);

interface Acked {
  ids: FileIds;
  sha: string;
  size: number;
}

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

async function bytesOf(size: number, seed: number): Promise<Buffer> {
  return collect(patternSource(size, seed).open());
}

/** Uploads small files in a loop until `stop()`; records the acknowledged ones. */
function uploader(c: DsmClient, user: string, seedBase: number) {
  const acked: Acked[] = [];
  let failures = 0;
  let lastOk = Date.now();
  let longestStall = 0;
  let running = true;
  const done = (async () => {
    let i = 0;
    while (running) {
      const size = 1000 + ((i * 7919) % 60_000);
      const seed = seedBase + i++;
      try {
        const r = await c.upload({ appId: APP, userId: user, source: patternSource(size, seed) });
        acked.push({ ids: r.ids, sha: sha(await bytesOf(size, seed)), size });
        longestStall = Math.max(longestStall, Date.now() - lastOk);
        lastOk = Date.now();
      } catch {
        failures++;
        await sleep(20);
      }
    }
  })();
  return {
    acked,
    get failures() {
      return failures;
    },
    get longestStall() {
      return longestStall;
    },
    async stop() {
      running = false;
      await done;
    },
  };
}

async function verifyAll(c: DsmClient, files: Acked[]): Promise<void> {
  for (const f of files) {
    const d = await c.download(f.ids);
    const b = await collect(d.stream);
    expect(b.length, `size of ${f.ids.fileId}`).toBe(f.size);
    expect(sha(b), `sha-256 of ${f.ids.fileId}`).toBe(f.sha);
  }
}

/** Calls `op` every `everyMs` until stopped; returns the success times to measure outages. */
function prober(op: () => Promise<unknown>, everyMs = 20) {
  const ok: number[] = [];
  let fails = 0;
  let running = true;
  const done = (async () => {
    while (running) {
      const t = Date.now();
      try {
        await op();
        ok.push(Date.now());
      } catch {
        fails++;
      }
      await sleep(Math.max(0, everyMs - (Date.now() - t)));
    }
  })();
  return {
    ok,
    get fails() {
      return fails;
    },
    async stop() {
      running = false;
      await done;
    },
    /** Longest time without a successful call after `from` (the fault). */
    outageAfter(from: number): number {
      const after = ok.filter((t) => t >= from);
      const before = ok.filter((t) => t < from).at(-1) ?? from;
      let prev = before;
      let worst = 0;
      for (const t of after) {
        worst = Math.max(worst, t - prev);
        prev = t;
      }
      return worst;
    },
  };
}

describe.sequential('HA lab: keepalived VIPs, GlusterFS replica 3, dsm nodes in namespaces', () => {
  it('the cluster answers through the VIPs only', async () => {
    const c = lab.client();
    try {
      const r = await c.upload({ appId: APP, userId: 'smoke', source: patternSource(200_000, 1) });
      expect(r.group).toBe('group001');
      await verifyAll(c, [{ ids: r.ids, sha: sha(await bytesOf(200_000, 1)), size: 200_000 }]);
      const st = await c.tracker.status();
      expect(st.tracker).toBe('t1');
      const storages = st.groups.flatMap((g) => g.storages);
      expect(storages.map((s) => `${s.host}:${s.port}`).sort()).toEqual(
        STORAGE_HOSTS.map((h) => `${ipOf(h)}:${STORAGE_PORT}`),
      );
      expect(lab.vipHolders(TRACKER_VIP)).toEqual(['t1']);
      expect(lab.vipHolders(ID_VIP)).toEqual(['i1']);
    } finally {
      await c.close();
    }
  });

  it('(a) tracker master crashes: VIP moves, lookups see < 2 s outage, no acknowledged upload lost', async () => {
    const look = lab.client({ connectTimeoutMs: 200, ioTimeoutMs: 500 });
    const up = lab.client();
    const lookups = prober(() => look.tracker.storagesFor(APP, 'lookup-user'));
    const writes = uploader(up, 'ha-a', 10_000);
    try {
      await sleep(1000);
      // 1. process crash: SIGKILL of the tracker; keepalived's PING check fails, VIP goes to t2
      let t0 = Date.now();
      await lab.killNode('t1');
      await until('tracker VIP on t2', 10_000, () => lab.vipHolders(TRACKER_VIP).join() === 't2', 20);
      const vipMove = Date.now() - t0;
      await sleep(1500);
      const crashOutage = lookups.outageAfter(t0);
      figure(
        `(a) tracker process SIGKILL: VIP on t2 after ${vipMove} ms, longest lookup outage ${crashOutage} ms`,
      );
      expect(crashOutage).toBeLessThan(2000);
      // back: tracker restarted, t1 (priority 150) takes the VIP back once its check passes
      t0 = Date.now();
      await lab.startNode('t1');
      await until('tracker VIP back on t1', 15_000, () => lab.vipHolders(TRACKER_VIP).join() === 't1', 20);
      await sleep(1000);
      const failback = lookups.outageAfter(t0);
      figure(`(a) failback to the restarted t1: longest lookup outage ${failback} ms`);
      expect(failback).toBeLessThan(2000);
      await lab.waitStorages(3, 10_000);

      // 2. host crash: keepalived SIGKILLed and t1's cable cut (tracker unreachable, no RST)
      t0 = Date.now();
      lab.killKeepalived('t1');
      await lab.cut('t1');
      await until('tracker VIP on t2', 10_000, () => lab.vipHolders(TRACKER_VIP).includes('t2'), 20);
      const vipMove2 = Date.now() - t0;
      await sleep(1500);
      const cutOutage = lookups.outageAfter(t0);
      figure(
        `(a) t1 keepalived SIGKILL + cable cut: VIP on t2 after ${vipMove2} ms, longest lookup outage ${cutOutage} ms`,
      );
      expect(cutOutage).toBeLessThan(2000);
      // repair: remove the VIP the killed keepalived left on t1 (P12), cable back, keepalived back
      await lab.startKeepalivedAfterCrash('t1');
      await until(
        'tracker VIP back on t1 only',
        15_000,
        () => lab.vipHolders(TRACKER_VIP).join() === 't1',
        20,
      );
      await lab.waitStorages(3, 15_000);
    } finally {
      await lookups.stop();
      await writes.stop();
    }
    figure(
      `(a) lookups: ${lookups.ok.length} ok, ${lookups.fails} failed; uploads: ${writes.acked.length} acknowledged, ${writes.failures} failed`,
    );
    expect(writes.acked.length).toBeGreaterThan(10);
    await verifyAll(up, writes.acked);
    figure(`(a) all ${writes.acked.length} acknowledged uploads read back byte-equal`);
    await look.close();
    await up.close();
  }, 120_000);

  it('(b) id-server master crashes: ids keep coming from the backup, never a duplicate', async () => {
    const { ids, pool } = lab.idClient();
    const got: number[] = [];
    const p = prober(async () => got.push(await ids.nextId('ha-b')), 5);
    try {
      await sleep(800);
      let t0 = Date.now();
      await lab.killNode('i1');
      await until('id VIP on i2', 10_000, () => lab.vipHolders(ID_VIP).join() === 'i2', 20);
      const move = Date.now() - t0;
      await sleep(1500);
      const outage = p.outageAfter(t0);
      const fromBackup = p.ok.filter((t) => t > t0 + move).length;
      figure(
        `(b) id server SIGKILL: VIP on i2 after ${move} ms, longest id outage ${outage} ms, ${fromBackup} ids from i2`,
      );
      expect(outage).toBeLessThan(2000);
      expect(fromBackup).toBeGreaterThan(10);
      t0 = Date.now();
      await lab.startNode('i1');
      await until('id VIP back on i1', 15_000, () => lab.vipHolders(ID_VIP).join() === 'i1', 20);
      await sleep(800);
      figure(`(b) failback to i1: longest id outage ${p.outageAfter(t0)} ms`);
    } finally {
      await p.stop();
      await pool.close();
    }
    const dupes = got.length - new Set(got).size;
    figure(`(b) ${got.length} ids handed out across failover and failback, ${dupes} duplicates`);
    expect(dupes).toBe(0);
    expect(got.length).toBeGreaterThan(100);
  }, 60_000);

  it('(c) storage host dies: offline within 3 heartbeats, every file still downloads byte-equal', async () => {
    const c = lab.client();
    const files: Acked[] = [];
    try {
      for (let i = 0; i < 24; i++) {
        const size = [0, 1, 4096, 70_000, 1_000_000][i % 5] as number;
        const r = await c.upload({
          appId: APP,
          userId: `ha-c-${i % 3}`,
          source: patternSource(size, 500 + i),
        });
        files.push({ ids: r.ids, size, sha: sha(await bytesOf(size, 500 + i)) });
      }
      // power loss: cable cut first, then every process killed, so nothing tells the tracker
      const t0 = Date.now();
      await lab.killHost('s1', { silent: true });
      const s1 = `${ipOf('s1')}:${STORAGE_PORT}`;
      await until(
        's1 not ACTIVE on the tracker',
        10_000,
        async () => {
          const st = await c.tracker.status();
          const r = st.groups.flatMap((g) => g.storages).find((s) => `${s.host}:${s.port}` === s1);
          return r && r.state !== 'ACTIVE';
        },
        25,
      );
      const detect = Date.now() - t0;
      figure(
        `(c) storage host s1 lost (cable cut, then processes killed): tracker marked it OFFLINE after ${detect} ms (beat ${BEAT_MS} ms, limit 3 beats = ${BEAT_TIMEOUT_MS} ms)`,
      );
      expect(detect).toBeLessThanOrEqual(BEAT_TIMEOUT_MS + SWEEP_MS + 150);
      // found by the missing beats, not by a closed connection
      expect(detect).toBeGreaterThanOrEqual(BEAT_TIMEOUT_MS - BEAT_MS - 100);
      const t1 = Date.now();
      await verifyAll(c, files);
      figure(
        `(c) all ${files.length} files of group001 downloaded byte-equal from s2/s3 in ${Date.now() - t1} ms (GlusterFS gives up on the silent brick after network.ping-timeout 5 s)`,
      );
      const addrs = await c.tracker.storagesFor(APP, 'ha-c-0');
      expect(addrs.addrs.map((a) => a.host).sort()).toEqual([ipOf('s2'), ipOf('s3')]);
      // a new upload while s1 is away, read back after it returns
      const r = await c.upload({ appId: APP, userId: 'ha-c-0', source: patternSource(300_000, 777) });
      files.push({ ids: r.ids, size: 300_000, sha: sha(await bytesOf(300_000, 777)) });
    } finally {
      await lab.reviveHost('s1');
    }
    const heal = await lab.healWait(60_000);
    figure(`(c) s1 back: heal finished ${heal} ms after its brick restarted`);
    await lab.waitStorages(3, 15_000);
    await verifyAll(c, files);
    await c.close();
  }, 120_000);

  it('(d) brick killed while writes continue, restarted, healed: all files equal on every brick', async () => {
    const c = lab.client();
    const writes = uploader(c, 'ha-d', 50_000);
    let heal = 0;
    try {
      await sleep(1000);
      const t0 = Date.now();
      await lab.killBrick('s2');
      // the storages report the entries waiting for the dead brick; `dsm status` shows them
      const seen = await until(
        'pending heals in dsm status',
        10_000,
        async () => {
          const st = await c.tracker.status();
          const max = Math.max(...st.groups.flatMap((g) => g.storages.map((s) => s.pendingHeals)));
          return max > 0 ? { max, table: formatStatus(st) } : undefined;
        },
        200,
      );
      figure(
        `(d) brick of s2 killed: dsm status shows ${seen.max} pending heals ${Date.now() - t0} ms later`,
      );
      console.log(seen.table);
      expect(seen.table).toMatch(/HEALS/);
      await sleep(1000);
      const during = writes.acked.length;
      await lab.restartBricks();
      figure(`(d) brick of s2 down for ${Date.now() - t0} ms`);
      heal = await lab.healWait(60_000);
      await sleep(500);
      expect(during).toBeGreaterThan(0);
    } finally {
      await writes.stop();
    }
    figure(
      `(d) ${writes.acked.length} uploads acknowledged, ${writes.failures} failed, longest write stall ${writes.longestStall} ms; heal done ${heal} ms after restart`,
    );
    expect(writes.failures).toBe(0);
    await lab.healWait(60_000);
    await verifyAll(c, writes.acked);
    const trees = STORAGE_HOSTS.map((h) => brickTree(lab.brickPath(h)));
    const [a, b, d] = trees as [Map<string, string>, Map<string, string>, Map<string, string>];
    expect(a.size).toBeGreaterThan(writes.acked.length);
    expect(b).toEqual(a);
    expect(d).toEqual(a);
    figure(`(d) ${a.size} files identical (sha-256) on the bricks of s1, s2 and s3`);
    await until(
      'dsm status back to 0 pending heals',
      15_000,
      async () => {
        const st = await c.tracker.status();
        return st.groups.flatMap((g) => g.storages).every((s) => s.pendingHeals === 0);
      },
      200,
    );
    await c.close();
  }, 120_000);
});

/** relative path -> sha-256 of every regular file of a brick, without gluster's own .glusterfs. */
function brickTree(root: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (dir: string, rel: string) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      if (rel === '' && e.name === '.glusterfs') continue;
      const p = join(dir, e.name);
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) walk(p, r);
      else if (e.isFile() && statSync(p).isFile()) out.set(r, sha(readFileSync(p)));
    }
  };
  walk(root, '');
  return new Map([...out.entries()].sort());
}
