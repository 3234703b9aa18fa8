import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '@dsm/common';
import { Command, decodeAddrsReply, Errno, Status } from '@dsm/packets';
import { BACKEND_NAMES } from '@dsm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configSchema } from './config.ts';
import { routeCacheKey } from './group-router.ts';
import { addrs, ask, createBackend, FakeStorage, log, type TrackerBackend } from './test-support.ts';
import { startTracker } from './tracker.ts';

const groupOf = async (port: number, appId: string, userId: string): Promise<string> => {
  const r = await addrs(port, appId, userId);
  if (r.header.status !== Status.OK) throw new Error(`addrs failed: ${r.message}`);
  return decodeAddrsReply(r.body).group;
};

describe.each(BACKEND_NAMES)('routing on %s', (backendName) => {
  let backend: TrackerBackend;
  const user = (s: string) => `${s}-${backendName}-${Math.random().toString(36).slice(2, 8)}`;
  beforeAll(async () => {
    backend = await createBackend(backendName);
  });
  afterAll(async () => {
    await backend?.cleanup();
  });

  it('a new user goes to the live group with the most free space, and stays there', async () => {
    const t = await backend.start();
    const small = await FakeStorage.active(t.port, { group: 'gsmall', port: 31001, freeBytes: 100 });
    const big = await FakeStorage.active(t.port, { group: 'gbig', port: 31002, freeBytes: 1000 });
    // a group without an ACTIVE storage is never chosen, however much space it reports
    await FakeStorage.join(t.port, { group: 'gonline', port: 31003, freeBytes: 1e15 });
    const u1 = user('u1');
    expect(await groupOf(t.port, 'tnvideo', u1)).toBe('gbig');
    expect(await backend.routerRows('tnvideo', u1)).toEqual([{ group_name: 'gbig' }]);
    // the route is cached under the app id and user id
    expect(await t.kv.get(routeCacheKey('tnvideo', u1))).toBe('gbig');

    // free space changes: u1 stays (cache and t_router), a new user goes to the other group
    await big.beat({ freeBytes: 1 });
    expect(await groupOf(t.port, 'tnvideo', u1)).toBe('gbig');
    await t.kv.del(routeCacheKey('tnvideo', u1));
    expect(await groupOf(t.port, 'tnvideo', u1)).toBe('gbig');
    expect(await t.kv.get(routeCacheKey('tnvideo', u1))).toBe('gbig');
    const u2 = user('u2');
    expect(await groupOf(t.port, 'tnvideo', u2)).toBe('gsmall');

    // the app id is part of the route (the seed ignored it)
    const t2 = await backend.start({ appIds: ['tnvideo', 'app2'] });
    const s2 = await FakeStorage.active(t2.port, { group: 'gother', port: 31004, freeBytes: 5 });
    // u1's route comes from t_router (gbig), where t2 knows no storage: no fallback to another group
    const r = await addrs(t2.port, 'tnvideo', u1);
    expect([r.message, r.errno]).toEqual(['[vm] Get Storage Address Fail...', Errno.NO_STORAGE]);
    expect(await groupOf(t2.port, 'app2', u1)).toBe('gother');
    s2.close();
    small.close();
    big.close();
  });

  it('joined groups are recorded in t_groups_info', async () => {
    const t = await backend.start();
    const s = await FakeStorage.active(t.port, { group: 'gnew', port: 31010 });
    const names = async () =>
      (await t.db.db.selectFrom('t_groups_info').select('group_name').execute()).map((r) => r.group_name);
    await t.router.settle();
    expect(await names()).toEqual(expect.arrayContaining(['group001', 'gnew']));
    const n = (await names()).length;
    await FakeStorage.active(t.port, { group: 'gnew', port: 31011 }).then((x) => x.close());
    await t.router.settle();
    expect((await names()).length).toBe(n);
    s.close();
  });

  it('two trackers on one database route a user identically; concurrent first requests make one row', async () => {
    const t1 = await backend.start();
    const t2 = await backend.start();
    // the trackers disagree on free space: t1 prefers ga, t2 prefers gb
    const st = [
      await FakeStorage.active(t1.port, { group: 'ga', port: 32001, freeBytes: 900 }),
      await FakeStorage.active(t1.port, { group: 'gb', port: 32002, freeBytes: 100 }),
      await FakeStorage.active(t2.port, { group: 'ga', port: 32001, freeBytes: 100 }),
      await FakeStorage.active(t2.port, { group: 'gb', port: 32002, freeBytes: 900 }),
    ];
    const users = Array.from({ length: 12 }, (_, i) => user(`c${i}`));
    const results = await Promise.all(
      users.map(async (u) => {
        const [a, b] = await Promise.all([groupOf(t1.port, 'tnvideo', u), groupOf(t2.port, 'tnvideo', u)]);
        return { u, a, b };
      }),
    );
    for (const r of results) {
      expect(r.a, r.u).toBe(r.b);
      const rows = await backend.routerRows('tnvideo', r.u);
      expect(rows, r.u).toEqual([{ group_name: r.a }]);
    }
    // later requests agree as well
    for (const r of results) expect(await groupOf(t2.port, 'tnvideo', r.u)).toBe(r.a);
    for (const s of st) s.close();
  });

  it('cache outage (Redis down): routing still works from the database', async () => {
    const t = await backend.start({ cache: 'redis://127.0.0.1:1' });
    const s = await FakeStorage.active(t.port, { group: 'gcache', port: 33001 });
    const u = user('nocache');
    const started = Date.now();
    expect(await groupOf(t.port, 'tnvideo', u)).toBe('gcache');
    expect(await groupOf(t.port, 'tnvideo', u)).toBe('gcache');
    expect(Date.now() - started).toBeLessThan(5000);
    expect(await backend.routerRows('tnvideo', u)).toEqual([{ group_name: 'gcache' }]);
    s.close();
  });

  it('database outage: DB_UNAVAILABLE "[Tracker] Get Groupname Fail..."; cached routes, joins and the server stay up', async () => {
    const t = await backend.start();
    const s = await FakeStorage.active(t.port, { group: 'gdb', port: 34001 });
    const known = user('known');
    expect(await groupOf(t.port, 'tnvideo', known)).toBe('gdb');
    await t.db.close(); // the database is gone from now on
    const r = await addrs(t.port, 'tnvideo', user('new'));
    expect(r.header).toMatchObject({ command: Command.TRACKER_REPLY, status: Status.ERROR });
    expect(r.message).toBe('[vm] [Tracker] Get Groupname Fail...');
    expect(r.errno).toBe(Errno.DB_UNAVAILABLE);
    // a route in the cache is still served
    expect(await groupOf(t.port, 'tnvideo', known)).toBe('gdb');
    // the registry side needs no database
    expect((await s.beat()).header.status).toBe(Status.OK);
    const s2 = await FakeStorage.active(t.port, { group: 'gdb2', port: 34002 });
    expect((await ask(t.port, Command.PING)).header.status).toBe(Status.OK);
    s.close();
    s2.close();
  });
});

describe('start-up without a database', () => {
  it('starts when MySQL is unreachable; routing answers DB_UNAVAILABLE until it is back', async () => {
    const t = await startTracker(
      { listen: '127.0.0.1:0', hostname: 'vm', database: 'mysql://root@127.0.0.1:1/dsm_t_unreachable' },
      { log },
    );
    try {
      const s = await FakeStorage.active(t.port, { port: 35001 });
      const r = await addrs(t.port, 'tnvideo', 'u');
      expect([r.message, r.errno]).toEqual(['[vm] [Tracker] Get Groupname Fail...', Errno.DB_UNAVAILABLE]);
      s.close();
    } finally {
      await t.close();
    }
  });

  it('runs from a loadConfig() result; a relative SQLite path is relative to the config file', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'dsm-tracker-cfg-'));
    try {
      const file = join(dir, 'tracker.json');
      writeFileSync(file, JSON.stringify({ listen: '127.0.0.1:0', database: 'sqlite:./data/t.db' }));
      const t = await startTracker(loadConfig(configSchema, file), { log });
      try {
        expect(t.ready).toEqual({ role: 'tracker', listen: `127.0.0.1:${t.port}` });
        expect(existsSync(join(dir, 'data', 't.db'))).toBe(true);
      } finally {
        await t.close();
      }
      writeFileSync(file, JSON.stringify({ listen: '127.0.0.1:0', beatTimeout: 5 }));
      expect(() => loadConfig(configSchema, file)).toThrow(/unknown config key "beatTimeout"/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses a bad configuration', async () => {
    await expect(startTracker({ listen: '127.0.0.1:0', database: 'postgres://x' }, { log })).rejects.toThrow(
      /bad database URL/,
    );
    await expect(startTracker({ listen: '127.0.0.1:0', maxAddrs: 0 }, { log })).rejects.toThrow(/maxAddrs/);
  });
});
