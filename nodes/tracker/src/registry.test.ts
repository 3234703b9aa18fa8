import { Errno } from '@dsm/packets';
import { describe, expect, it } from 'vitest';
import { configSchema, isIpOrCidr, parseListen } from './config.ts';
import { groupFreeBytes } from './group-router.ts';
import { ctime, formatGroupList, type JoinInput, Registry } from './registry.ts';
import { resolveDatabaseUrl } from './tracker.ts';

process.env.TZ = 'UTC';

function clock(start = 1_800_000_000_000) {
  let t = start;
  return { now: () => t, advance: (ms: number) => (t += ms) };
}

const join = (over: Partial<JoinInput> = {}): JoinInput => ({
  group: 'group001',
  hostname: 'h1',
  host: '10.0.0.1',
  port: 23000,
  version: '1.0',
  protocolVersion: 1,
  startTime: 1_795_610_017,
  joinTime: 1_795_610_017,
  conn: 'c1',
  ...over,
});

function caught(f: () => unknown): { message: string; errno: number } {
  try {
    f();
  } catch (e) {
    return e as { message: string; errno: number };
  }
  throw new Error('expected a throw');
}

describe('registry', () => {
  it('join → ONLINE with the tracker clock as beat time; beat → ACTIVE; silence → OFFLINE; 24 h → dropped', () => {
    const c = clock();
    const reg = new Registry({ beatTimeoutMs: 30_000, now: c.now });
    const r = reg.join(join());
    expect(r.state).toBe('ONLINE');
    expect(r.beatTime).toBe(c.now()); // not the storage's join time (quirk 9)
    expect(r.joinTime).toBe(1_795_610_017_000);
    c.advance(10_000);
    reg.beat('group001', 'h1', '10.0.0.1', 'c1');
    expect(r.state).toBe('ACTIVE');
    c.advance(29_999);
    reg.sweep();
    expect(r.state).toBe('ACTIVE');
    c.advance(1);
    expect(reg.sweep()).toEqual({ offline: 1, dropped: 0 });
    expect(r.state).toBe('OFFLINE');
    c.advance(24 * 3600_000 - 1);
    expect(reg.sweep().dropped).toBe(0);
    c.advance(1);
    expect(reg.sweep().dropped).toBe(1);
    expect(reg.size).toBe(0);
    expect(reg.groupNames()).toEqual([]);
  });

  it('identity includes the port: two storages on one host are two records (quirk 9)', () => {
    const reg = new Registry({ beatTimeoutMs: 30_000 });
    reg.join(join({ port: 23000 }));
    reg.join(join({ port: 23001, conn: 'c2' }));
    expect(reg.storages('group001').map((r) => r.port)).toEqual([23000, 23001]);
    // a re-join overwrites in place and keeps join order
    reg.join(join({ port: 23000, version: '2.0', conn: 'c3' }));
    expect(reg.storages('group001').map((r) => `${r.port}/${r.version}`)).toEqual(['23000/2.0', '23001/1.0']);
    // the seed beat prefers the record of its own connection
    reg.beat('group001', 'h1', '10.0.0.1', 'c2');
    expect(reg.storages('group001').map((r) => r.state)).toEqual(['ONLINE', 'ACTIVE']);
    // from an unknown connection: every (group, hostname, IP) match
    reg.beat('group001', 'h1', '10.0.0.1', 'other');
    expect(reg.storages('group001').map((r) => r.state)).toEqual(['ACTIVE', 'ACTIVE']);
  });

  it('beat-ext matches (group, IP, port) and updates capacity; unknown → NOT_JOINED', () => {
    const reg = new Registry({ beatTimeoutMs: 30_000 });
    reg.join(join());
    const b = {
      group: 'group001',
      host: '10.0.0.1',
      port: 23000,
      totalBytes: 9,
      freeBytes: 5,
      load: 3,
      pendingHeals: 2,
      conn: 'c1',
    };
    const r = reg.beatExt(b);
    expect(r).toMatchObject({ state: 'ACTIVE', totalBytes: 9, freeBytes: 5, load: 3, pendingHeals: 2 });
    const e = caught(() => reg.beatExt({ ...b, port: 1 }));
    expect(e.message).toBe('Mark Storage As ACTIVE Fail...');
    expect(e.errno).toBe(Errno.NOT_JOINED);
    expect(caught(() => reg.beat('group001', 'nosuchhost', '10.0.0.1', 'c1')).errno).toBe(Errno.NOT_JOINED);
    expect(caught(() => reg.beat('group001', 'h1', '10.0.0.2', 'c1')).errno).toBe(Errno.NOT_JOINED);
  });

  it('join validation: group name [A-Za-z0-9]{1,16}, port ≠ 0', () => {
    const reg = new Registry({ beatTimeoutMs: 30_000 });
    for (const g of ['', 'grp-1', 'a b', 'é', 'x'.repeat(17)]) {
      expect(caught(() => reg.join(join({ group: g }))).message).toBe(`Invalid Groupname: ${g}`);
    }
    expect(caught(() => reg.join(join({ port: 0 }))).message).toBe('Invalid Port: 0');
    expect(reg.join(join({ group: 'x'.repeat(16) })).group).toBe('x'.repeat(16));
  });

  it('connection close marks only the storages whose last join/beat used that connection', () => {
    const reg = new Registry({ beatTimeoutMs: 30_000 });
    reg.join(join({ port: 1, conn: 'a' }));
    reg.join(join({ port: 2, conn: 'b' }));
    reg.join(join({ port: 1, conn: 'a2' })); // re-joined on a new connection
    expect(reg.connectionClosed('a')).toBe(0);
    expect(reg.connectionClosed('b')).toBe(1);
    expect(reg.storages('group001').map((r) => r.state)).toEqual(['ONLINE', 'OFFLINE']);
  });

  it('pick: ACTIVE only, least load first, then most free bytes, then join order; capped', () => {
    const reg = new Registry({ beatTimeoutMs: 30_000 });
    const beat = (port: number, load: number, freeBytes: number) =>
      reg.beatExt({
        group: 'g',
        host: '10.0.0.1',
        port,
        totalBytes: 0,
        freeBytes,
        load,
        pendingHeals: -1,
        conn: 'c',
      });
    for (const p of [1, 2, 3, 4, 5]) reg.join(join({ group: 'g', port: p }));
    beat(1, 5, 100);
    beat(2, 1, 10);
    beat(3, 1, 50);
    beat(4, 0, 0);
    // 5 stays ONLINE: never handed out
    expect(reg.pick('g', 3).map((r) => r.port)).toEqual([4, 3, 2]);
    expect(reg.pick('g', 10).map((r) => r.port)).toEqual([4, 3, 2, 1]);
    expect(reg.pick('nosuch', 3)).toEqual([]);
  });

  it('pick: a storage whose store refuses writes goes last, and back in line when it recovers', () => {
    const reg = new Registry({ beatTimeoutMs: 30_000 });
    const beat = (port: number, load: number, writable?: boolean) =>
      reg.beatExt({
        group: 'g',
        host: '10.0.0.1',
        port,
        totalBytes: 0,
        freeBytes: 0,
        load,
        pendingHeals: -1,
        writable,
        conn: 'c',
      });
    for (const p of [1, 2, 3]) reg.join(join({ group: 'g', port: p }));
    beat(1, 0, false); // least loaded, but its store lost quorum
    beat(2, 5, true);
    beat(3, 7); // a first-version beat (no store flags): writable
    expect(reg.pick('g', 3).map((r) => r.port)).toEqual([2, 3, 1]);
    expect(reg.toStatus(reg.storages('g')[0]!)).toMatchObject({ port: 1, writable: false });
    reg.join(join({ group: 'g', port: 1 })); // a re-join keeps what the last beat said
    expect(reg.storages('g')[0]!.writable).toBe(false);
    beat(1, 0, true);
    expect(reg.pick('g', 3).map((r) => r.port)).toEqual([1, 2, 3]);
  });

  it('pick: equal storages (seed storages report no load) are handed out in varying order', () => {
    const reg = new Registry({ beatTimeoutMs: 30_000 });
    for (const p of [1, 2, 3, 4]) {
      reg.join(join({ port: p, conn: `c${p}` }));
      reg.beat('group001', 'h1', '10.0.0.1', `c${p}`);
    }
    const firsts = new Set<number>();
    for (let i = 0; i < 200; i++) firsts.add(reg.pick('group001', 3)[0]!.port);
    expect(firsts.size).toBe(4);
  });

  it('group list text: seed format, groups byte-ordered, storages in join order, no final newline', () => {
    const c = clock(Date.UTC(2024, 2, 4, 20, 21, 38));
    const reg = new Registry({ beatTimeoutMs: 30_000, now: c.now });
    expect(formatGroupList(reg)).toBe('COUNT OF GROUPS: 0');
    const t = Date.UTC(2024, 2, 10, 20, 21, 38) / 1000;
    reg.join(join({ group: 'b', hostname: 'hb', startTime: t, joinTime: t }));
    reg.join(join({ group: 'B', hostname: 'hB', port: 7, startTime: t, joinTime: t }));
    reg.join(join({ group: 'B', hostname: 'hB2', port: 6, startTime: t, joinTime: t }));
    reg.beat('B', 'hB2', '10.0.0.1', 'c1');
    expect(formatGroupList(reg)).toBe(
      [
        'COUNT OF GROUPS: 2',
        'GROUPNAME: B',
        'COUNT OF STORAGES: 2',
        'COUNT OF ACTIVE STORAGES: 1',
        'VERSION: 1.0',
        'HOSTNAME: hB',
        'ADDRESS: 10.0.0.1:7',
        'STARTUP TIME: Sun Mar 10 20:21:38 2024',
        'JOIN TIME: Sun Mar 10 20:21:38 2024',
        'BEAT TIME: Mon Mar  4 20:21:38 2024',
        'STATUS: ONLINE',
        'VERSION: 1.0',
        'HOSTNAME: hB2',
        'ADDRESS: 10.0.0.1:6',
        'STARTUP TIME: Sun Mar 10 20:21:38 2024',
        'JOIN TIME: Sun Mar 10 20:21:38 2024',
        'BEAT TIME: Mon Mar  4 20:21:38 2024',
        'STATUS: ACTIVE',
        'GROUPNAME: b',
        'COUNT OF STORAGES: 1',
        'COUNT OF ACTIVE STORAGES: 0',
        'VERSION: 1.0',
        'HOSTNAME: hb',
        'ADDRESS: 10.0.0.1:23000',
        'STARTUP TIME: Sun Mar 10 20:21:38 2024',
        'JOIN TIME: Sun Mar 10 20:21:38 2024',
        'BEAT TIME: Mon Mar  4 20:21:38 2024',
        'STATUS: ONLINE',
      ].join('\n'),
    );
  });

  it('ctime: 24 characters, space-padded day, out-of-range times do not crash', () => {
    expect(ctime(1_795_610_017_000)).toBe('Wed Nov 25 12:33:37 2026');
    expect(ctime(Date.UTC(2024, 2, 4, 1, 2, 3))).toBe('Mon Mar  4 01:02:03 2024');
    expect(ctime(0)).toHaveLength(24);
    expect(ctime(2 ** 53 * 1000)).toBeTypeOf('string');
  });

  it('group free space is the max over its active storages (one shared volume)', () => {
    const reg = new Registry({ beatTimeoutMs: 30_000 });
    reg.join(join({ port: 1, freeBytes: 100 }));
    reg.join(join({ port: 2, freeBytes: 300 }));
    expect(groupFreeBytes(reg.storages('group001'))).toBe(300);
  });
});

describe('config', () => {
  it('every key has a default', () => {
    const c = configSchema.parse({});
    expect(c).toMatchObject({
      listen: '127.0.0.1:21000',
      database: 'sqlite:./.dsm/tracker.db',
      cache: 'memory:',
      appIds: ['tnvideo'],
      groups: [],
      beatTimeoutMs: 30_000,
      sweepIntervalMs: 1000,
      routeCacheTtlMs: 60_000,
      maxAddrs: 3,
      joinSecret: '',
      allowFrom: [],
    });
    expect(c.hostname.length).toBeGreaterThan(0);
  });

  it('refuses bad values', () => {
    expect(configSchema.safeParse({ listen: 'nope' }).success).toBe(false);
    expect(configSchema.safeParse({ appIds: ['bad-app'] }).success).toBe(false);
    expect(configSchema.safeParse({ appIds: [] }).success).toBe(false);
    expect(configSchema.safeParse({ groups: ['g_1'] }).success).toBe(false);
    expect(configSchema.safeParse({ allowFrom: ['10.0.0.0/33'] }).success).toBe(false);
    expect(configSchema.safeParse({ joinSecret: 'x'.repeat(64) }).success).toBe(false);
    expect(configSchema.safeParse({ maxAddrs: 0 }).success).toBe(false);
  });

  it('a relative SQLite path is relative to the config folder', () => {
    expect(resolveDatabaseUrl('sqlite:./.dsm/tracker.db', '/etc/dsm')).toBe(
      'sqlite:/etc/dsm/.dsm/tracker.db',
    );
    expect(resolveDatabaseUrl('sqlite:/abs/t.db', '/etc/dsm')).toBe('sqlite:/abs/t.db');
    expect(resolveDatabaseUrl('sqlite::memory:', '/etc/dsm')).toBe('sqlite::memory:');
    expect(resolveDatabaseUrl('mysql://root@h/db', '/etc/dsm')).toBe('mysql://root@h/db');
  });

  it('helpers', () => {
    expect(parseListen('127.0.0.1:0')).toEqual({ host: '127.0.0.1', port: 0 });
    expect(parseListen('[::1]:21000')).toEqual({ host: '::1', port: 21000 });
    expect(isIpOrCidr('10.1.2.3')).toBe(true);
    expect(isIpOrCidr('10.0.0.0/8')).toBe(true);
    expect(isIpOrCidr('::1')).toBe(true);
    expect(isIpOrCidr('fd00::/8')).toBe(true);
    expect(isIpOrCidr('host.example')).toBe(false);
    expect(isIpOrCidr('10.0.0.0/x')).toBe(false);
  });
});
