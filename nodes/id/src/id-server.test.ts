/**
 * The id server over the wire, on SQLite and on MariaDB: seed vectors replayed byte for byte,
 * id order per key, request validation, restart behaviour and database outages.
 */
import { Connection, IdClient, Pool } from '@dsm/client';
import { nodeTransport } from '@dsm/client/node';
import { parseConfig } from '@dsm/common';
import {
  Command,
  decodeErrorReply,
  decodeHeader,
  decodeI64Body,
  Errno,
  encodeFrame,
  encodeIdRequest,
  exactly,
  fromHex,
  HEADER_LENGTH,
  Status,
} from '@dsm/packets';
import {
  loadSeedVectors,
  MYSQL_URL,
  mariadbBackend,
  SEED_VECTORS_PATH,
  type SeedVector,
  sqliteBackend,
} from '@dsm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configSchema, resolveDatabaseUrl } from './config.ts';
import type { IdServer } from './id-server.ts';
import { BACKENDS, rawExchange, ServerSet, TEST_HOSTNAME, ToggleProxy, testConfig } from './test-support.ts';

function vector(all: SeedVector[], name: string): SeedVector {
  const v = all.find((x) => x.name === name);
  if (!v) throw new Error(`seed vector ${name} missing from ${SEED_VECTORS_PATH}`);
  return v;
}

/** Error text without its `[hostname] ` prefix. */
function stripHost(text: string): string {
  const m = /^\[[^\]]*\] (.*)$/s.exec(text);
  if (!m) throw new Error(`error text without a [hostname] prefix: ${JSON.stringify(text)}`);
  return m[1] as string;
}

async function connection(port: number): Promise<Connection> {
  const sock = await nodeTransport.connect('127.0.0.1', port, { timeoutMs: 2000 });
  return new Connection(sock, `127.0.0.1:${port}`, { ioTimeoutMs: 10_000 });
}

async function getId(c: Connection, key: string): Promise<number> {
  return decodeI64Body(
    await c.request(Command.ID_GET, encodeIdRequest(key), Command.ID_REPLY, exactly(8)),
    'id',
  );
}

/** Sends an ID_GET with a raw body and returns the error reply (asserting the server closed). */
async function errorFor(port: number, body: Uint8Array): Promise<{ errno: number; message: string }> {
  const r = await rawExchange(port, encodeFrame(Command.ID_GET, body), true);
  const h = decodeHeader(r.frame);
  expect(h.command).toBe(Command.ID_REPLY);
  expect(h.status).toBe(Status.ERROR);
  expect(r.closed).toBe(true);
  return decodeErrorReply(r.frame.subarray(HEADER_LENGTH));
}

describe('config', () => {
  it('has defaults for every key and checks step and listen', () => {
    const c = parseConfig(configSchema, {});
    expect(c.listen).toBe('127.0.0.1:22000');
    expect(c.database).toBe('sqlite:./.dsm/id.db');
    expect(c.step).toBe(100);
    expect(c.maxKeyLength).toBe(64);
    expect(c.hostname.length).toBeGreaterThan(0);
    expect(() => parseConfig(configSchema, { step: 9 })).toThrow(/config key "step"/);
    expect(() => parseConfig(configSchema, { listen: 'nope' })).toThrow(/config key "listen"/);
    expect(() => parseConfig(configSchema, { maxKeyLength: 65 })).toThrow(/maxKeyLength/);
  });

  it('refuses to start on 0.0.0.0 without auth unless auth.allowUnauthenticated', async () => {
    const servers = new ServerSet();
    const open = { listen: '0.0.0.0:0', hostname: TEST_HOSTNAME, database: 'sqlite::memory:' };
    await expect(servers.start(configSchema.parse(open))).rejects.toThrow(
      /config key "auth.required": the node listens on 0.0.0.0, which is not loopback, without authentication/,
    );
    const s = await servers.start(configSchema.parse({ ...open, auth: { allowUnauthenticated: true } }));
    expect(s.port).toBeGreaterThan(0);
    await servers.stopAll();
  });

  it('resolves relative SQLite paths against the config folder', () => {
    expect(resolveDatabaseUrl('sqlite:./.dsm/id.db', '/etc/dsm')).toBe('sqlite:/etc/dsm/.dsm/id.db');
    expect(resolveDatabaseUrl('sqlite:/abs/id.db', '/etc/dsm')).toBe('sqlite:/abs/id.db');
    expect(resolveDatabaseUrl('sqlite::memory:', '/etc/dsm')).toBe('sqlite::memory:');
    expect(resolveDatabaseUrl('mysql://root@h/db', '/etc/dsm')).toBe('mysql://root@h/db');
  });
});

describe.each(BACKENDS)('id server on %s', (_name, makeBackend) => {
  const backend = makeBackend();
  const servers = new ServerSet();
  const vectors = loadSeedVectors();
  let main: IdServer;

  beforeAll(async () => {
    await backend.setup();
    main = await servers.start(testConfig(backend.database('main'), { step: 10 }));
  });

  afterAll(async () => {
    await servers.stopAll();
    await backend.cleanup();
  });

  it('reports ready with role and listen address; answers PING', async () => {
    expect(main.ready).toEqual({ role: 'id', listen: `127.0.0.1:${main.port}` });
    const r = await rawExchange(main.port, encodeFrame(Command.PING));
    expect(decodeHeader(r.frame)).toEqual({ bodyLength: 0, command: Command.ID_REPLY, status: Status.OK });
  });

  it('replays the seed vectors: same command, status and body layout as the seed id server', async () => {
    // idget: success, 8-byte id; the connection stays open (seed: persistent connections).
    const okReq = vector(vectors, 'idget.request');
    const okRep = vector(vectors, 'idget.reply');
    const ok = await rawExchange(main.port, fromHex(okReq.frame_hex));
    const seedOk = fromHex(okRep.frame_hex);
    expect(decodeHeader(ok.frame)).toEqual(decodeHeader(seedOk));
    expect(ok.frame.length).toBe(seedOk.length);
    expect(ok.closed).toBe(false);
    expect(decodeI64Body(ok.frame.subarray(HEADER_LENGTH))).toBeGreaterThanOrEqual(0);

    // Errors: same command/status, errno (2 bytes) + "[host] text" + NUL; only the errno
    // (the seed always sent -1) and the hostname differ. The server closes the connection.
    const errorCases: [string, number][] = [
      ['idget_key70', Errno.BAD_LENGTH],
      ['id_unknown_cmd', Errno.UNKNOWN_COMMAND],
    ];
    for (const [name, errno] of errorCases) {
      const req = vector(vectors, `${name}.request`);
      const rep = vector(vectors, `${name}.reply`);
      const seed = fromHex(rep.frame_hex);
      const ours = await rawExchange(main.port, fromHex(req.frame_hex), true);
      const sh = decodeHeader(seed);
      const oh = decodeHeader(ours.frame);
      expect(oh.command, name).toBe(sh.command);
      expect(oh.status, name).toBe(sh.status);
      expect(ours.closed, name).toBe(true);
      const seedErr = decodeErrorReply(seed.subarray(HEADER_LENGTH));
      const ourErr = decodeErrorReply(ours.frame.subarray(HEADER_LENGTH));
      expect(stripHost(ourErr.message), name).toBe(stripHost(seedErr.message));
      expect(ourErr.message.startsWith(`[${TEST_HOSTNAME}] `), name).toBe(true);
      expect(ourErr.errno, name).toBe(errno);
      // Layout: 2 + text + NUL, the text NUL-terminated like the seed's.
      expect(oh.bodyLength, name).toBe(2 + Buffer.byteLength(ourErr.message) + 1);
      expect(ours.frame.at(-1), name).toBe(0);
      expect(oh.bodyLength - sh.bodyLength, name).toBe(TEST_HOSTNAME.length - 'vm'.length);
    }
  });

  it('ids per key strictly increase across segments; keys are independent', async () => {
    const c = await connection(main.port);
    try {
      const a: number[] = [];
      const b: number[] = [];
      for (let i = 0; i < 25; i++) {
        a.push(await getId(c, 'order/a'));
        if (i % 2 === 0) b.push(await getId(c, 'order/b'));
      }
      // One server on a fresh key: consecutive ids through several segments of 10.
      expect(a).toEqual(Array.from({ length: 25 }, (_, i) => i));
      expect(b).toEqual(Array.from({ length: 13 }, (_, i) => i));
      expect(await getId(c, 'order/a')).toBe(25);
    } finally {
      c.close();
    }
  });

  it('refuses bad keys with an error reply and keeps serving other connections', async () => {
    const c = await connection(main.port);
    try {
      const before = await getId(c, 'bad/keep');
      const cases: [string, Uint8Array, number, string][] = [
        ['empty body', new Uint8Array(0), Errno.BAD_FIELD, 'Invalid ID Key'],
        ['empty key', new Uint8Array([0]), Errno.BAD_FIELD, 'Invalid ID Key'],
        ['no NUL', new TextEncoder().encode('abc'), Errno.BAD_FIELD, 'Invalid ID Key'],
        ['NUL inside', new TextEncoder().encode('a\0b\0'), Errno.BAD_FIELD, 'Invalid ID Key'],
        [
          '65-byte key',
          new Uint8Array([...Buffer.from('k'.repeat(65)), 0]),
          Errno.BAD_LENGTH,
          'Invalid Body Length: 66 > 65',
        ],
      ];
      for (const [what, body, errno, message] of cases) {
        const e = await errorFor(main.port, body);
        expect(e, what).toEqual({ errno, message: `[${TEST_HOSTNAME}] ${message}` });
      }
      // A 64-byte key is fine; the other connection still works and continues in order.
      expect(await getId(c, 'k'.repeat(64))).toBe(0);
      expect(await getId(c, 'bad/keep')).toBe(before + 1);
    } finally {
      c.close();
    }
  });

  it('maxKeyLength refuses longer keys', async () => {
    const s = await servers.start(testConfig(backend.database('main'), { maxKeyLength: 8 }));
    try {
      const e = await errorFor(s.port, encodeIdRequest('123456789'));
      expect(e).toEqual({
        errno: Errno.BAD_FIELD,
        message: `[${TEST_HOSTNAME}] Invalid ID Key Length: 9 > 8`,
      });
      const c = await connection(s.port);
      expect(await getId(c, '12345678')).toBeGreaterThanOrEqual(0);
      c.close();
    } finally {
      await servers.stop(s);
    }
  });

  it("keyPatterns: by default only the storages' <group>:<index> keys are served; others get BAD_FIELD", async () => {
    const s = await servers.start(
      configSchema.parse({
        listen: '127.0.0.1:0',
        hostname: TEST_HOSTNAME,
        database: backend.database('main'),
      }),
    );
    try {
      for (const key of ['../data', 'group001', 'x:y', 'group001:0:1', `${'g'.repeat(17)}:0`]) {
        const e = await errorFor(s.port, encodeIdRequest(key));
        expect(e, key).toEqual({
          errno: Errno.BAD_FIELD,
          message: `[${TEST_HOSTNAME}] ID Key Not Served: ${key}`,
        });
      }
      const c = await connection(s.port);
      expect(await getId(c, 'group001:0')).toBeGreaterThanOrEqual(0);
      expect(await getId(c, 'G9:12')).toBeGreaterThanOrEqual(0);
      c.close();
    } finally {
      await servers.stop(s);
    }
    // a configured list replaces the default
    const t = await servers.start(testConfig(backend.database('main'), { keyPatterns: ['\\.\\./data'] }));
    try {
      expect((await errorFor(t.port, encodeIdRequest('group001:0'))).errno).toBe(Errno.BAD_FIELD);
      const c = await connection(t.port);
      expect(await getId(c, '../data')).toBeGreaterThanOrEqual(0);
      c.close();
    } finally {
      await servers.stop(t);
    }
    expect(() => parseConfig(configSchema, { keyPatterns: ['('] })).toThrow(/config key "keyPatterns.0"/);
  });

  it('a restart skips the rest of the segment and never repeats an id (seed: 0,1,2 … then 100)', async () => {
    const url = backend.database('restart');
    let s = await servers.start(testConfig(url, { step: 100 }));
    let c = await connection(s.port);
    expect([await getId(c, '../data'), await getId(c, '../data'), await getId(c, '../data')]).toEqual([
      0, 1, 2,
    ]);
    c.close();
    await servers.stop(s);
    s = await servers.start(testConfig(url, { step: 100 }));
    c = await connection(s.port);
    expect(await getId(c, '../data')).toBe(100);
    expect(await getId(c, '../data')).toBe(101);
    expect(await getId(c, 'other')).toBe(0);
    c.close();
    await servers.stop(s);
    s = await servers.start(testConfig(url, { step: 100 }));
    c = await connection(s.port);
    expect(await getId(c, '../data')).toBe(200);
    c.close();
    await servers.stop(s);
  });

  it('ranges (41) from two servers on one database and single ids never overlap, across restarts', async () => {
    const url = backend.database('ranges');
    const pool = new Pool({ transport: nodeTransport });
    const seen = new Set<number>();
    const take = (ids: Iterable<number>) => {
      for (const id of ids) {
        expect(seen.has(id), `id ${id} handed out twice`).toBe(false);
        seen.add(id);
      }
    };
    const rangeIds = (r: { first: number; count: number }) =>
      Array.from({ length: r.count }, (_, i) => r.first + i);
    try {
      for (let round = 0; round < 2; round++) {
        // two id servers of one database (the storages of a group may ask either), then restarted
        const a = await servers.start(testConfig(url, { step: 10 }));
        const b = await servers.start(testConfig(url, { step: 10 }));
        const ca = new IdClient(pool, [{ host: '127.0.0.1', port: a.port }]);
        const cb = new IdClient(pool, [{ host: '127.0.0.1', port: b.port }]);
        const got = await Promise.all([
          ...Array.from({ length: 6 }, (_, i) => (i % 2 ? ca : cb).nextRange('group001:0', 7 + i)),
          ...Array.from({ length: 12 }, (_, i) => (i % 2 ? ca : cb).nextId('group001:0')),
        ]);
        for (const g of got) take(typeof g === 'number' ? [g] : rangeIds(g));
        const r = got[0] as { first: number; count: number };
        expect(r.count).toBe(7);
        await servers.stop(a);
        await servers.stop(b);
      }
      expect(seen.size).toBe(2 * (7 + 8 + 9 + 10 + 11 + 12 + 12));
    } finally {
      await pool.close();
    }
  });

  it('a range request with a bad count or key is refused (errno BAD_FIELD) and the connection closed', async () => {
    const zero = new Uint8Array([0, 0, 0, 0, ...encodeIdRequest('group001:0')]);
    const r = await rawExchange(main.port, encodeFrame(Command.ID_GET_RANGE, zero), true);
    expect(r.closed).toBe(true);
    const e = decodeErrorReply(r.frame.subarray(HEADER_LENGTH));
    expect(e.errno).toBe(Errno.BAD_FIELD);
    expect(stripHost(e.message)).toBe('Invalid ID Count: 0');
    const noNul = new Uint8Array([0, 0, 0, 5, 0x61, 0x62]);
    const r2 = await rawExchange(main.port, encodeFrame(Command.ID_GET_RANGE, noNul), true);
    expect(decodeErrorReply(r2.frame.subarray(HEADER_LENGTH)).errno).toBe(Errno.BAD_FIELD);
    // the server still serves ranges afterwards
    const pool = new Pool({ transport: nodeTransport });
    try {
      const got = await new IdClient(pool, [{ host: '127.0.0.1', port: main.port }]).nextRange(
        'group001:0',
        3,
      );
      expect(got.count).toBe(3);
    } finally {
      await pool.close();
    }
  });

  it('the IdClient reads ids through a pool', async () => {
    const pool = new Pool({ transport: nodeTransport });
    try {
      const client = new IdClient(pool, [{ host: '127.0.0.1', port: main.port }]);
      const ids = await Promise.all(Array.from({ length: 50 }, () => client.nextId('pool/key')));
      expect(new Set(ids).size).toBe(50);
      expect([...ids].sort((x, y) => x - y)).toEqual(Array.from({ length: 50 }, (_, i) => i));
    } finally {
      await pool.close();
    }
  });
});

describe('database outages', () => {
  const servers = new ServerSet();
  afterAll(() => servers.stopAll());

  it('MySQL down at start-up: the server starts, requests get DB_UNAVAILABLE, the server stays up', async () => {
    const s = await servers.start(testConfig('mysql://root@127.0.0.1:1/x'));
    for (let i = 0; i < 2; i++) {
      const e = await errorFor(s.port, encodeIdRequest('../data'));
      expect(e).toEqual({
        errno: Errno.DB_UNAVAILABLE,
        message: `[${TEST_HOSTNAME}] GET ID Fail, Key: ../data`,
      });
    }
    // Concurrent requests for one key all fail cleanly.
    const many = await Promise.all(Array.from({ length: 5 }, () => errorFor(s.port, encodeIdRequest('k'))));
    for (const e of many) expect(e.errno).toBe(Errno.DB_UNAVAILABLE);
    const ping = await rawExchange(s.port, encodeFrame(Command.PING));
    expect(decodeHeader(ping.frame).status).toBe(Status.OK);
    await servers.stop(s);
  });

  it('MySQL going away and coming back: errors while down, then ids continue without repeats', async () => {
    const backend = mariadbBackend({ redis: false });
    await backend.setup();
    const target = new URL(MYSQL_URL);
    const proxy = new ToggleProxy({ host: target.hostname, port: Number(target.port || 3306) });
    await proxy.up();
    try {
      const dbName = new URL(backend.database('outage')).pathname;
      const url = `mysql://${target.username || 'root'}${target.password ? `:${target.password}` : ''}@127.0.0.1:${proxy.port}${dbName}`;
      const s = await servers.start(testConfig(url, { step: 10 }), { db: { connectTimeoutMs: 1000 } });
      const c = await connection(s.port);
      const first = [];
      for (let i = 0; i < 12; i++) first.push(await getId(c, 'outage'));
      expect(first).toEqual(Array.from({ length: 12 }, (_, i) => i));
      c.close();

      await proxy.down();
      // Ids left in the current segment are still served from memory…
      const c2 = await connection(s.port);
      const cached = [];
      for (let i = 0; i < 8; i++) cached.push(await getId(c2, 'outage'));
      expect(cached).toEqual([12, 13, 14, 15, 16, 17, 18, 19]);
      c2.close();
      // …then the next reservation fails, without crashing the server.
      for (let i = 0; i < 2; i++) {
        const e = await errorFor(s.port, encodeIdRequest('outage'));
        expect(e).toEqual({
          errno: Errno.DB_UNAVAILABLE,
          message: `[${TEST_HOSTNAME}] GET ID Fail, Key: outage`,
        });
      }

      await proxy.up();
      const c3 = await connection(s.port);
      const after = await getId(c3, 'outage');
      expect(after).toBeGreaterThanOrEqual(20);
      expect(await getId(c3, 'outage')).toBe(after + 1);
      c3.close();
      await servers.stop(s);
    } finally {
      await proxy.down();
      await backend.cleanup();
    }
  });

  it('SQLite locked by another writer: DB_UNAVAILABLE after the busy wait, then recovers', async () => {
    const backend = sqliteBackend();
    await backend.setup();
    const Database = (await import('better-sqlite3')).default;
    try {
      const url = backend.database('locked');
      const s = await servers.start(testConfig(url, { step: 10 }), { busyWaitMs: 300 });
      const c = await connection(s.port);
      expect(await getId(c, 'lock')).toBe(0);
      c.close();
      const other = new Database(url.slice('sqlite:'.length));
      other.exec('BEGIN IMMEDIATE');
      try {
        // The in-memory segment still serves; a key needing the database fails in time.
        const c2 = await connection(s.port);
        expect(await getId(c2, 'lock')).toBe(1);
        c2.close();
        const t0 = Date.now();
        const e = await errorFor(s.port, encodeIdRequest('lock2'));
        expect(e).toEqual({
          errno: Errno.DB_UNAVAILABLE,
          message: `[${TEST_HOSTNAME}] GET ID Fail, Key: lock2`,
        });
        expect(Date.now() - t0).toBeLessThan(3000);
      } finally {
        other.exec('ROLLBACK');
        other.close();
      }
      const c3 = await connection(s.port);
      expect(await getId(c3, 'lock2')).toBe(0);
      c3.close();
      await servers.stop(s);
    } finally {
      await backend.cleanup();
    }
  });
});
