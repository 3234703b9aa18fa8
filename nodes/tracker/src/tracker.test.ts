import {
  Command,
  decodeAddrsReply,
  decodeClusterStatus,
  Errno,
  encodeBeat,
  encodeFrame,
  encodeHeader,
  encodeJoin,
  HEADER_LENGTH,
  Status,
  toHex,
} from '@dsm/packets';
import { BACKEND_NAMES, frameOf, loadSeedVectors, RawConn, type SeedVector, until } from '@dsm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ask, createBackend, FakeStorage, type TrackerBackend, text } from './test-support.ts';

// The seed printed times with ctime() in the tracker's zone: UTC on the capture machine.
process.env.TZ = 'UTC';

const vectors = loadSeedVectors();
const vec = (name: string): SeedVector => {
  const v = vectors.find((x) => x.name === name);
  if (!v) throw new Error(`seed vector ${name} missing`);
  return v;
};
const trackerRequests = vectors.filter((v) => v.server === 'tracker' && v.direction === 'request');
const replyOf = (req: SeedVector): SeedVector => vec(req.name.replace(/\.request$/, '.reply'));

/** Expected errno per error vector (the seed always sent −1). */
const ERRNO: Record<string, number> = {
  addrs_bad_appid: Errno.UNKNOWN_APP,
  join_short: Errno.BAD_LENGTH,
  heartbeat_unknown: Errno.NOT_JOINED,
  tracker_unknown_cmd: Errno.UNKNOWN_COMMAND,
};

const seedJoin = (over: Partial<Parameters<typeof encodeJoin>[0]> = {}) =>
  encodeJoin({
    version: '1.0',
    group: 'group001',
    hostname: 'seedhost',
    port: 23000,
    startTime: 1_795_610_017,
    joinTime: 1_795_610_017,
    ...over,
  });

describe.each(BACKEND_NAMES)('tracker on %s', (backendName) => {
  let backend: TrackerBackend;
  beforeAll(async () => {
    backend = await createBackend(backendName);
  });
  afterAll(async () => {
    await backend?.cleanup();
  });

  it('replays every tracker request vector of the seed capture with the seed replies', async () => {
    const t = await backend.start({ hostname: 'vm' });
    const seen = new Set<string>();
    const expectSame = (got: Uint8Array, want: SeedVector) => expect(toHex(got)).toBe(want.frame_hex);

    // 1. the storage's persistent connection: join + heartbeats, byte-identical OK replies
    const storage = await RawConn.open(t.port);
    for (const name of ['join', 'heartbeat1', 'heartbeat2']) {
      const req = vec(`${name}.request`);
      storage.send(frameOf(req));
      const r = await storage.next();
      expectSame(encodeFrame(r.header.command, r.body, r.header.status), replyOf(req));
      seen.add(req.name);
    }
    const rec = t.registry.get('group001', '127.0.0.1', 23001);
    expect(rec?.state).toBe('ACTIVE');

    // 2. group list: same text except BEAT TIME (the tracker's clock at the heartbeat)
    {
      const req = vec('groups.request');
      const c = await RawConn.open(t.port);
      c.send(frameOf(req));
      const r = await c.next();
      const want = replyOf(req);
      expect(r.header).toMatchObject({ command: want.command, status: want.status });
      expect(r.body[r.body.length - 1]).toBe(0);
      const got = text(r.body);
      const beatLine = /^BEAT TIME: .*$/m;
      expect(got.replace(beatLine, 'BEAT TIME: *')).toBe(
        String(want.fields.text).replace(beatLine, 'BEAT TIME: *'),
      );
      expect(got).toMatch(/^BEAT TIME: \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}$/m);
      expect(got.endsWith('\n')).toBe(false);
      // persistent: still usable after a success
      expect((await c.request(Command.PING)).header.status).toBe(Status.OK);
      c.close();
      seen.add(req.name);
    }

    // 3. every other request on its own connection
    for (const req of trackerRequests) {
      if (seen.has(req.name)) continue;
      const want = replyOf(req);
      const c = await RawConn.open(t.port);
      c.send(frameOf(req));
      const r = await c.next();
      expect(r.header.command, req.name).toBe(want.command);
      expect(r.header.status, req.name).toBe(want.status);
      if (want.status === Status.OK) {
        // address lists: group001 + "127.0.0.1:23001;" exactly as captured, garbage padding or not
        expectSame(encodeFrame(r.header.command, r.body, r.header.status), want);
        expect(decodeAddrsReply(r.body)).toEqual({
          group: 'group001',
          addrs: [{ host: '127.0.0.1', port: 23001 }],
        });
        expect(await c.closedWithin(100), `${req.name} keeps the connection open`).toBe(false);
      } else {
        // same layout and text (hostname "vm" here too); only the errno differs from the seed's −1
        expect(r.header.bodyLength, req.name).toBe(want.frame_hex.length / 2 - HEADER_LENGTH);
        expect(`${r.message}`, req.name).toBe(want.fields.text);
        expect(r.errno, req.name).toBe(ERRNO[req.name.replace(/\.request$/, '')]);
        expect(await c.closedWithin(), `${req.name} closes the connection`).toBe(true);
      }
      c.close();
      seen.add(req.name);
    }
    expect([...seen].sort()).toEqual(trackerRequests.map((v) => v.name).sort());
    expect(seen.size).toBeGreaterThanOrEqual(17);

    // the storage connection is untouched by all of that
    expect(storage.isClosed).toBe(false);
    storage.close();
    await until(() => rec?.state === 'OFFLINE');
  });

  it('states: join → ONLINE, beat → ACTIVE, silence → OFFLINE, beat again → ACTIVE, socket close → OFFLINE at once', async () => {
    const t = await backend.start({ beatTimeoutMs: 300, sweepIntervalMs: 20 });
    const { storage, reply } = await FakeStorage.join(t.port, { port: 24001 });
    expect(reply.header).toEqual({ bodyLength: 0, command: Command.TRACKER_REPLY, status: Status.OK });
    const rec = t.registry.get('group001', '127.0.0.1', 24001)!;
    expect(rec.state).toBe('ONLINE');
    expect((await storage.beat({ freeBytes: 777, load: 4 })).header.status).toBe(Status.OK);
    expect(rec).toMatchObject({ state: 'ACTIVE', freeBytes: 777, load: 4 });
    // connection still open, but no beats: OFFLINE after beatTimeoutMs
    const silentSince = Date.now();
    await until(() => rec.state === 'OFFLINE', 2000);
    expect(Date.now() - silentSince).toBeGreaterThanOrEqual(250);
    expect(storage.conn.isClosed).toBe(false);
    await storage.beat();
    expect(rec.state).toBe('ACTIVE');
    storage.close();
    await until(() => rec.state === 'OFFLINE', 1000, 5);

    // status (16): the cluster as JSON
    const st = await ask(t.port, Command.TRACKER_STATUS);
    const s = decodeClusterStatus(st.body);
    expect(s.tracker).toBe('vm');
    expect(s.groups).toHaveLength(1);
    expect(s.groups[0]!.storages[0]).toMatchObject({
      group: 'group001',
      host: '127.0.0.1',
      port: 24001,
      state: 'OFFLINE',
      freeBytes: 777,
      protocolVersion: 2,
      version: '2.0',
    });
    expect(Math.abs(s.now - Date.now())).toBeLessThan(5000);
    // PING
    expect((await ask(t.port, Command.PING)).header).toEqual({
      bodyLength: 0,
      command: Command.TRACKER_REPLY,
      status: Status.OK,
    });
  });

  it('a killed storage (its socket closes) is OFFLINE at once, long before the beat timeout', async () => {
    const t = await backend.start({ beatTimeoutMs: 60_000 });
    const s = await FakeStorage.active(t.port, { port: 24003 });
    const seed = await RawConn.open(t.port);
    expect((await seed.request(Command.TRACKER_JOIN, seedJoin({ port: 24004 }))).header.status).toBe(
      Status.OK,
    );
    const recs = [
      t.registry.get('group001', '127.0.0.1', 24003)!,
      t.registry.get('group001', '127.0.0.1', 24004)!,
    ];
    expect(recs.map((r) => r.state)).toEqual(['ACTIVE', 'ONLINE']);
    s.close();
    seed.close();
    await until(() => recs.every((r) => r.state === 'OFFLINE'), 2000, 5);
  });

  it('a storage that re-joined on a new connection stays up when its old connection closes', async () => {
    const t = await backend.start();
    const a = await FakeStorage.active(t.port, { port: 24002 });
    const b = await FakeStorage.active(t.port, { port: 24002 });
    const rec = t.registry.get('group001', '127.0.0.1', 24002)!;
    a.close();
    await a.conn.closed;
    await new Promise((r) => setTimeout(r, 50));
    expect(rec.state).toBe('ACTIVE');
    b.close();
    await until(() => rec.state === 'OFFLINE');
  });

  it('seed join/beat: the seed layout, matched on (group, hostname, peer IP); validation texts', async () => {
    const t = await backend.start();
    const c = await RawConn.open(t.port);
    expect((await c.request(Command.TRACKER_JOIN, seedJoin())).header.status).toBe(Status.OK);
    const rec = t.registry.get('group001', '127.0.0.1', 23000)!;
    expect(rec).toMatchObject({ state: 'ONLINE', hostname: 'seedhost', protocolVersion: 1 });
    expect(Math.abs(rec.beatTime - Date.now())).toBeLessThan(2000); // tracker clock, not the body's
    expect(
      (await c.request(Command.TRACKER_BEAT, encodeBeat({ group: 'group001', hostname: 'seedhost' }))).header
        .status,
    ).toBe(Status.OK);
    expect(rec.state).toBe('ACTIVE');
    const bad = async (
      body: Uint8Array,
      message: string,
      errno: number,
      cmd: number = Command.TRACKER_JOIN,
    ) => {
      const r = await ask(t.port, cmd, body);
      expect(r.header.status).toBe(Status.ERROR);
      expect(r.message).toBe(`[vm] ${message}`);
      expect(r.errno).toBe(errno);
    };
    await bad(seedJoin({ group: 'grp-1' }), 'Invalid Groupname: grp-1', Errno.BAD_FIELD);
    await bad(seedJoin({ group: '' }), 'Invalid Groupname: ', Errno.BAD_FIELD);
    await bad(seedJoin({ port: 0 }), 'Invalid Port: 0', Errno.BAD_FIELD);
    await bad(
      encodeBeat({ group: 'group001', hostname: 'otherhost' }),
      'Mark Storage As ACTIVE Fail...',
      Errno.NOT_JOINED,
      Command.TRACKER_BEAT,
    );
    c.close();
  });

  it('address list: ACTIVE storages only, least load first, then most free; at most maxAddrs; none → NO_STORAGE', async () => {
    const t = await backend.start({ maxAddrs: 3, groups: ['gsort'] });
    const user = `sort-${backendName}`;
    const s = await Promise.all(
      [
        { port: 25001, load: 5, freeBytes: 900 },
        { port: 25002, load: 1, freeBytes: 100 },
        { port: 25003, load: 1, freeBytes: 500 },
        { port: 25004, load: 0, freeBytes: 1 },
        { port: 25005, load: 9, freeBytes: 1 },
      ].map((o) => FakeStorage.active(t.port, { group: 'gsort', ...o })),
    );
    await FakeStorage.join(t.port, { group: 'gsort', port: 25006, load: 0, freeBytes: 1e12 }); // ONLINE only
    const r = await ask(t.port, Command.TRACKER_ADDRS, addrsBody('tnvideo', user));
    expect(r.header.status).toBe(Status.OK);
    expect(decodeAddrsReply(r.body)).toEqual({
      group: 'gsort',
      addrs: [25004, 25003, 25002].map((port) => ({ host: '127.0.0.1', port })),
    });
    // loads change at the next beat
    await s[0]!.beat({ load: 0 });
    const r2 = decodeAddrsReply((await ask(t.port, Command.TRACKER_ADDRS, addrsBody('tnvideo', user))).body);
    expect(r2.addrs.map((a) => a.port)).toEqual([25001, 25004, 25003]);
    // a storage whose store refuses writes (lost quorum) goes to the end, and status says so
    await s[0]!.beat({ load: 0, writable: false });
    const r3w = decodeAddrsReply((await ask(t.port, Command.TRACKER_ADDRS, addrsBody('tnvideo', user))).body);
    expect(r3w.addrs.map((a) => a.port)).toEqual([25004, 25003, 25002]);
    const refusing = t.registry.storages('gsort').find((x) => x.port === 25001);
    expect(t.registry.toStatus(refusing!).writable).toBe(false);
    await s[0]!.beat({ load: 0, writable: true });
    const r4w = decodeAddrsReply((await ask(t.port, Command.TRACKER_ADDRS, addrsBody('tnvideo', user))).body);
    expect(r4w.addrs.map((a) => a.port)).toEqual([25001, 25004, 25003]);
    // every storage of the group gone → Get Storage Address Fail...
    for (const x of s) x.close();
    await until(() => t.registry.active('gsort').length === 0);
    const r3 = await ask(t.port, Command.TRACKER_ADDRS, addrsBody('tnvideo', user));
    expect(r3.message).toBe('[vm] Get Storage Address Fail...');
    expect(r3.errno).toBe(Errno.NO_STORAGE);
  });

  it('app id checks: "Invalid APPID" and "Unknownn APPID" (the seed typo)', async () => {
    const t = await backend.start({ appIds: ['tnvideo', 'other'] });
    const r1 = await ask(t.port, Command.TRACKER_ADDRS, addrsBody('', 'u'));
    expect([r1.message, r1.errno]).toEqual(['[vm] Invalid APPID: ', Errno.BAD_FIELD]);
    const r2 = await ask(t.port, Command.TRACKER_ADDRS, addrsBody('a-b', 'u'));
    expect([r2.message, r2.errno]).toEqual(['[vm] Invalid APPID: a-b', Errno.BAD_FIELD]);
    const r3 = await ask(t.port, Command.TRACKER_ADDRS, addrsBody('tnvideo2', 'u'));
    expect([r3.message, r3.errno]).toEqual(['[vm] Unknownn APPID: tnvideo2', Errno.UNKNOWN_APP]);
    // known app, no storage anywhere: routing fails
    const r4 = await ask(t.port, Command.TRACKER_ADDRS, addrsBody('other', 'u'));
    expect([r4.message, r4.errno]).toEqual(['[vm] [Tracker] Get Groupname Fail...', Errno.NO_STORAGE]);
  });

  it('joinSecret: wrong or missing secret and seed joins are refused', async () => {
    const t = await backend.start({ joinSecret: 's3cret' });
    const seed = await ask(t.port, Command.TRACKER_JOIN, seedJoin());
    expect(seed.errno).toBe(Errno.UNAUTHORIZED);
    expect(seed.message).toBe('[vm] Join Into Groups Fail, A Join Secret Is Required');
    const wrong = await FakeStorage.join(t.port, { port: 26001, secret: 'nope' });
    expect(wrong.reply.errno).toBe(Errno.UNAUTHORIZED);
    expect(wrong.reply.message).toBe('[vm] Join Into Groups Fail, Invalid Secret');
    expect(await wrong.storage.conn.closedWithin()).toBe(true);
    const none = await FakeStorage.join(t.port, { port: 26001 });
    expect(none.reply.errno).toBe(Errno.UNAUTHORIZED);
    expect(t.registry.size).toBe(0);
    const ok = await FakeStorage.active(t.port, { port: 26001, secret: 's3cret' });
    expect(t.registry.get('group001', '127.0.0.1', 26001)?.state).toBe('ACTIVE');
    ok.close();
  });

  it('allowFrom: every request from another address is refused (joins, beats, address lists)', async () => {
    const t = await backend.start({ allowFrom: ['127.0.0.1/32'] });
    const other = await FakeStorage.join(t.port, { port: 27001, localAddress: '127.0.0.2' });
    expect(other.reply.errno).toBe(Errno.UNAUTHORIZED);
    expect(other.reply.message).toBe('[vm] Address Not Allowed: 127.0.0.2');
    const beat = await ask(
      t.port,
      Command.TRACKER_BEAT,
      encodeBeat({ group: 'group001', hostname: 'x' }),
      '127.0.0.2',
    );
    expect(beat.errno).toBe(Errno.UNAUTHORIZED);
    const ok = await FakeStorage.active(t.port, { port: 27001 });
    expect(t.registry.storages('group001').map((r) => `${r.host}:${r.port}`)).toEqual(['127.0.0.1:27001']);
    const r = await ask(
      t.port,
      Command.TRACKER_ADDRS,
      addrsBody('tnvideo', `allow-${backendName}`),
      '127.0.0.2',
    );
    expect([r.errno, r.message]).toEqual([Errno.UNAUTHORIZED, '[vm] Address Not Allowed: 127.0.0.2']);
    const mine = await ask(t.port, Command.TRACKER_ADDRS, addrsBody('tnvideo', `allow-${backendName}`));
    expect(mine.header.status).toBe(Status.OK);
    ok.close();
    // and an allow list that does include 127.0.0.2
    const t2 = await backend.start({ allowFrom: ['127.0.0.2', '10.0.0.0/8'] });
    const s2 = await FakeStorage.active(t2.port, { port: 27002, localAddress: '127.0.0.2' });
    expect(t2.registry.get('group001', '127.0.0.2', 27002)?.state).toBe('ACTIVE');
    s2.close();
  });

  it('groups: joins for groups the tracker does not serve are refused', async () => {
    const t = await backend.start({ groups: ['group001'] });
    const r = await FakeStorage.join(t.port, { group: 'group002', port: 28001 });
    expect(r.reply.errno).toBe(Errno.UNAUTHORIZED);
    expect(r.reply.message).toBe('[vm] Join Into Groups Fail, Group Not Served: group002');
    const ok = await FakeStorage.active(t.port, { group: 'group001', port: 28001 });
    expect(t.registry.groupNames()).toEqual(['group001']);
    ok.close();
  });

  it('oversized, negative and truncated frames close only their own connection', async () => {
    const t = await backend.start();
    const s = await FakeStorage.active(t.port, { port: 29001 });
    const rec = t.registry.get('group001', '127.0.0.1', 29001)!;

    const big = await RawConn.open(t.port);
    big.send(encodeHeader({ bodyLength: 2 ** 40, command: Command.TRACKER_ADDRS, status: 0 }));
    const r1 = await big.next();
    expect([r1.message, r1.errno]).toEqual([`[vm] Invalid Body Length: ${2 ** 40} != 400`, Errno.BAD_LENGTH]);
    expect(await big.closedWithin()).toBe(true);

    const neg = await RawConn.open(t.port);
    const h = new Uint8Array(HEADER_LENGTH).fill(0xff);
    h[8] = Command.TRACKER_ADDRS;
    h[9] = 0;
    neg.send(h);
    expect((await neg.next()).message).toBe('[vm] Invalid Body Length: -1 < 0');
    expect(await neg.closedWithin()).toBe(true);

    const groupsWithBody = await RawConn.open(t.port);
    groupsWithBody.send(encodeFrame(Command.TRACKER_GROUPS, new Uint8Array(5)));
    expect((await groupsWithBody.next()).message).toBe('[vm] Invalid Body Length: 5 != 0');

    const cut = await RawConn.open(t.port);
    cut.send(encodeHeader({ bodyLength: 400, command: Command.TRACKER_ADDRS, status: 0 }));
    cut.send(new Uint8Array(100));
    cut.socket.end(); // half a frame, then EOF
    expect(await cut.closedWithin()).toBe(true);

    const half = await RawConn.open(t.port);
    half.send(new Uint8Array(4)); // not even a header
    half.socket.end();
    expect(await half.closedWithin()).toBe(true);

    // the storage's connection and the server are fine
    expect(s.conn.isClosed).toBe(false);
    expect((await s.beat()).header.status).toBe(Status.OK);
    expect(rec.state).toBe('ACTIVE');
    expect((await ask(t.port, Command.PING)).header.status).toBe(Status.OK);
    s.close();
  });
});

function addrsBody(appId: string, userId: string): Uint8Array {
  const b = new Uint8Array(400);
  b.set(Buffer.from(appId), 0);
  b.set(Buffer.from(userId), 16);
  return b;
}
