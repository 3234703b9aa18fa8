import { type AddressInfo, createServer } from 'node:net';
import { join } from 'node:path';
import { DsmError, ErrorCode } from '@dsm/common';
import { Errno } from '@dsm/packets';
import { type Backend, mariadbBackend, rejection, sqliteBackend } from '@dsm/testkit';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ACQUIRE_TIMEOUT_CODE,
  createDb,
  type DbDialect,
  type DbHandle,
  type DbRole,
  dbError,
  isDbUnavailable,
  isOutcomeUnknown,
  isUniqueViolation,
  migrate,
  migrationTableName,
  parseDbUrl,
  ROLE_TABLES,
} from './index.ts';

const ROLES: DbRole[] = ['tracker', 'id', 'storage'];

const TARGETS: [DbDialect, () => Backend][] = [
  ['sqlite', sqliteBackend],
  ['mysql', () => mariadbBackend({ redis: false })],
];

async function tableNames(h: DbHandle): Promise<string[]> {
  const tables = await h.db.introspection.getTables({ withInternalKyselyTables: true });
  return tables.map((t) => t.name);
}

describe.each(TARGETS)('@dsm/db on %s', (dialect, makeTarget) => {
  const target = makeTarget();
  const handles: DbHandle[] = [];
  let h: DbHandle;
  const open = (name: string) => {
    const x = createDb(target.database(name), { connectionLimit: 4 });
    handles.push(x);
    return x;
  };

  beforeAll(async () => {
    await target.setup();
    h = open('main');
    expect(h.dialect).toBe(dialect);
    for (const role of ROLES) await migrate(h.db, h.dialect, role);
  });

  afterAll(async () => {
    for (const x of handles) await x.close();
    await target.cleanup();
  });

  it('migrations create every table of each role', async () => {
    const names = await tableNames(h);
    for (const role of ROLES) {
      for (const t of ROLE_TABLES[role]) expect(names).toContain(t);
      expect(names).toContain(migrationTableName(role));
    }
    const file = (await h.db.introspection.getTables()).find((t) => t.name === 't_file_02');
    expect(file?.columns.map((c) => c.name).sort()).toEqual(
      [
        'id',
        'appid',
        'userid',
        'status',
        'file_path',
        'file_size',
        'content_type',
        'sha256',
        'mtime_ms',
        'create_time',
        'update_time',
      ].sort(),
    );
    const upload = (await h.db.introspection.getTables()).find((t) => t.name === 't_upload');
    expect(upload?.columns.map((c) => c.name)).toContain('total_size');
  });

  it('one role at a time: a database holding only the id role has only its tables', async () => {
    const x = open('idonly');
    expect(await migrate(x.db, x.dialect, 'id')).toEqual(['0001_id_initial']);
    const names = await tableNames(x);
    expect(names).toContain('t_id_gen');
    expect(names).not.toContain('t_router');
    expect(names).not.toContain('t_file_01');
  });

  it('migrating twice is a no-op', async () => {
    for (const role of ROLES) expect(await migrate(h.db, h.dialect, role)).toEqual([]);
    const groups = await h.db.selectFrom('t_groups_info').select('group_name').execute();
    expect(groups).toEqual([{ group_name: 'group001' }]);
  });

  it('concurrent migrations (3 connections in parallel, plus 3 calls on one) all succeed', async () => {
    const xs = [open('conc'), open('conc'), open('conc')];
    const results = await Promise.all(
      xs.flatMap((x) => ROLES.map((role) => migrate(x.db, x.dialect, role).then((r) => ({ role, r })))),
    );
    for (const role of ROLES) {
      // Exactly one caller applied each role's migration.
      expect(results.filter((x) => x.role === role && x.r.length > 0)).toHaveLength(1);
    }
    const first = xs[0]!;
    await Promise.all([1, 2, 3].map(() => migrate(first.db, first.dialect, 'tracker')));
    const groups = await first.db.selectFrom('t_groups_info').select('group_name').execute();
    expect(groups).toEqual([{ group_name: 'group001' }]);
    for (const t of ROLE_TABLES.storage) expect(await tableNames(first)).toContain(t);
  });

  it('a storage database from before the delete log gets it (migration 0002), counter at 0', async () => {
    const x = open('pre0002');
    expect(await migrate(x.db, x.dialect, 'storage')).toEqual([
      '0001_storage_initial',
      '0002_storage_delete_log',
    ]);
    // as a database migrated by an older dsm left it: 0001 only
    await sql`DROP TABLE t_delete_log`.execute(x.db);
    await sql`DROP TABLE t_delete_seq`.execute(x.db);
    await sql
      .raw(`DELETE FROM ${migrationTableName('storage')} WHERE name = '0002_storage_delete_log'`)
      .execute(x.db);
    expect(await migrate(x.db, x.dialect, 'storage')).toEqual(['0002_storage_delete_log']);
    expect(await x.db.selectFrom('t_delete_seq').selectAll().execute()).toEqual([{ id: 1, seq: 0 }]);
    expect(await x.db.selectFrom('t_delete_log').selectAll().execute()).toEqual([]);
    expect(await migrate(x.db, x.dialect, 'storage')).toEqual([]);
  });

  it('t_groups_info is seeded with group001', async () => {
    const rows = await h.db.selectFrom('t_groups_info').selectAll().execute();
    expect(rows).toHaveLength(1);
    expect(rows[0]!.group_name).toBe('group001');
    expect(typeof rows[0]!.id).toBe('number');
    expect(rows[0]!.create_time).not.toBeNull();
  });

  it('UNIQUE (appid, userid) on t_router rejects a duplicate; isUniqueViolation recognizes it', async () => {
    const userid = 'u'.repeat(255);
    await h.db.insertInto('t_router').values({ appid: 'app1', userid, group_name: 'group001' }).execute();
    await h.db.insertInto('t_router').values({ appid: 'app2', userid, group_name: 'group001' }).execute();
    const e = await rejection(
      h.db.insertInto('t_router').values({ appid: 'app1', userid, group_name: 'group002' }).execute(),
    );
    expect(isUniqueViolation(e)).toBe(true);
    expect(isDbUnavailable(e)).toBe(false);
    expect(() => dbError(e, 'inserting')).toThrow(e as Error);
    const rows = await h.db
      .selectFrom('t_router')
      .select(['appid', 'group_name'])
      .where('userid', '=', userid)
      .execute();
    expect(rows).toHaveLength(2);

    // Primary keys too.
    await h.db.insertInto('t_file_01').values({ id: 'f1', appid: 'app1', status: 1 }).execute();
    const e2 = await rejection(h.db.insertInto('t_file_01').values({ id: 'f1', appid: 'app1' }).execute());
    expect(isUniqueViolation(e2)).toBe(true);
    // Some other error is not a unique violation.
    const e3 = await rejection(sql`SELECT * FROM no_such_table`.execute(h.db));
    expect(isUniqueViolation(e3)).toBe(false);
    expect(isDbUnavailable(e3)).toBe(false);
  });

  it('BIGINT columns round-trip 2^40+5 as a number', async () => {
    const big = 2 ** 40 + 5;
    await h.db.insertInto('t_id_gen').values({ id: 'bigint-test', id_value: big }).execute();
    const row = await h.db
      .selectFrom('t_id_gen')
      .select('id_value')
      .where('id', '=', 'bigint-test')
      .executeTakeFirst();
    expect(row?.id_value).toBe(big);
    expect(typeof row?.id_value).toBe('number');

    await h.db
      .insertInto('t_file_03')
      .values({ id: 'big', file_size: big, mtime_ms: 1_700_000_000_123, sha256: 'a'.repeat(64) })
      .execute();
    const f = await h.db
      .selectFrom('t_file_03')
      .selectAll()
      .where('id', '=', 'big')
      .executeTakeFirstOrThrow();
    expect(f.file_size).toBe(big);
    expect(f.mtime_ms).toBe(1_700_000_000_123);

    await h.db
      .insertInto('t_upload')
      .values({
        id: 'up1',
        appid: 'a',
        userid: 'u',
        group_name: 'group001',
        temp_path: '/tmp/x',
        total_size: -1,
        content_type: 'application/octet-stream',
        created_ms: big,
        updated_ms: big,
      })
      .execute();
    const u = await h.db.selectFrom('t_upload').selectAll().where('id', '=', 'up1').executeTakeFirstOrThrow();
    expect(u.total_size).toBe(-1);
    expect(u.updated_ms).toBe(big);

    const count = await h.db
      .selectFrom('t_id_gen')
      .select((eb) => eb.fn.countAll<number>().as('n'))
      .executeTakeFirstOrThrow();
    expect(count.n).toBe(1);
  });

  it('a failed transaction rolls back', async () => {
    const e = await rejection(
      h.db.transaction().execute(async (trx) => {
        await trx.insertInto('t_id_gen').values({ id: 'rolled-back', id_value: 1 }).execute();
        await trx.updateTable('t_id_gen').set({ id_value: 99 }).where('id', '=', 'bigint-test').execute();
        throw new Error('boom');
      }),
    );
    expect((e as Error).message).toBe('boom');
    const rows = await h.db.selectFrom('t_id_gen').select(['id', 'id_value']).orderBy('id').execute();
    expect(rows).toEqual([{ id: 'bigint-test', id_value: 2 ** 40 + 5 }]);
  });

  it('a closed handle reports the database as unavailable', async () => {
    const x = open('closed');
    await migrate(x.db, x.dialect, 'id');
    await x.close();
    await x.close(); // idempotent
    const e = await rejection(x.db.selectFrom('t_id_gen').selectAll().execute());
    expect(isDbUnavailable(e)).toBe(true);
    // Closed before its first query: stays closed.
    const y = open('closed2');
    await y.close();
    const e2 = await rejection(sql`SELECT 1`.execute(y.db));
    expect(isDbUnavailable(e2)).toBe(true);
    expect(String((e2 as Error).message)).toMatch(/closed/);
  });
});

describe('@dsm/db URLs and unavailability', () => {
  it('a mysql URL pointing at a closed port fails queries with an unavailable error', async () => {
    const x = createDb('mysql://root@127.0.0.1:1/dsm_never');
    try {
      const started = Date.now();
      const e = await rejection(sql`SELECT 1`.execute(x.db));
      expect(Date.now() - started).toBeLessThan(6000);
      expect(isDbUnavailable(e)).toBe(true);
      expect(isUniqueViolation(e)).toBe(false);
      let wrapped: unknown;
      try {
        dbError(e, 'probing');
      } catch (w) {
        wrapped = w;
      }
      expect(wrapped).toBeInstanceOf(DsmError);
      expect(wrapped).toMatchObject({
        code: ErrorCode.DB_UNAVAILABLE,
        errno: Errno.DB_UNAVAILABLE,
        message: expect.stringMatching(/^probing: database unavailable/),
      });
      // migrate reports it the same way
      const m = await rejection(migrate(x.db, x.dialect, 'id'));
      expect(m).toMatchObject({ code: ErrorCode.DB_UNAVAILABLE });
    } finally {
      await x.close();
    }
  });

  it('a server that accepts but never answers fails within the connect timeout', async () => {
    const silent = createServer(() => {});
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()));
    const port = (silent.address() as AddressInfo).port;
    const x = createDb(`mysql://root@127.0.0.1:${port}/dsm_never?connectTimeoutMs=300`);
    try {
      const started = Date.now();
      const e = await rejection(sql`SELECT 1`.execute(x.db));
      expect(Date.now() - started).toBeLessThan(3000);
      expect(isDbUnavailable(e)).toBe(true);
    } finally {
      await x.close();
      silent.close();
    }
  });

  it('mysql URLs carry time limits; bad ones are config errors', () => {
    expect(
      parseDbUrl('mysql://root@h:3306/dsm?connectTimeoutMs=1500&queryTimeoutMs=3000&acquireTimeoutMs=4000'),
    ).toEqual({
      dialect: 'mysql',
      host: 'h',
      port: 3306,
      user: 'root',
      password: '',
      database: 'dsm',
      connectTimeoutMs: 1500,
      queryTimeoutMs: 3000,
      acquireTimeoutMs: 4000,
    });
    for (const q of [
      'queryTimeoutMs=0',
      'queryTimeoutMs=abc',
      'connectTimeoutMs=1.5',
      'acquireTimeoutMs=-1',
    ]) {
      let e: unknown;
      try {
        createDb(`mysql://root@h/dsm?${q}`);
      } catch (x) {
        e = x;
      }
      expect(e, q).toBeInstanceOf(DsmError);
      expect(e, q).toMatchObject({ code: ErrorCode.CONFIG });
    }
    expect(
      isDbUnavailable(
        Object.assign(new Error('Query inactivity timeout'), { code: 'PROTOCOL_SEQUENCE_TIMEOUT' }),
      ),
    ).toBe(true);
    expect(isDbUnavailable(Object.assign(new Error('x'), { code: ACQUIRE_TIMEOUT_CODE }))).toBe(true);
    // lost after sending: maybe applied; refused / no connection / an error reply: certainly not
    const err = (code: string) => Object.assign(new Error(code), { code });
    expect(isOutcomeUnknown(err('PROTOCOL_SEQUENCE_TIMEOUT'))).toBe(true);
    expect(isOutcomeUnknown(new Error('x', { cause: err('PROTOCOL_CONNECTION_LOST') }))).toBe(true);
    for (const c of ['ECONNREFUSED', ACQUIRE_TIMEOUT_CODE, 'ER_DUP_ENTRY', 'ER_SERVER_SHUTDOWN']) {
      expect(isOutcomeUnknown(err(c)), c).toBe(false);
    }
  });

  it('bad URLs are named without their password', () => {
    for (const url of ['mysql://u:secret@h:99999/dsm', 'mysql://u:p@secret@h/bad-name']) {
      expect(() => parseDbUrl(url), url).toThrow(/bad database URL "mysql:\/\/u:\*\*\*@h/);
      expect(() => parseDbUrl(url), url).not.toThrow(/secret/);
    }
  });

  it('bad URLs are config errors', () => {
    for (const url of [
      '',
      'postgres://x/y',
      'sqlite:',
      'mysql://root@host:3306/',
      'mysql://root@h/bad-name',
      'mysql://:99999/x',
    ]) {
      let e: unknown;
      try {
        createDb(url);
      } catch (x) {
        e = x;
      }
      expect(e, url).toBeInstanceOf(DsmError);
      expect(e, url).toMatchObject({ code: ErrorCode.CONFIG });
    }
    expect(parseDbUrl('mysql://u:p%40ss@db.example:3307/dsm')).toEqual({
      dialect: 'mysql',
      host: 'db.example',
      port: 3307,
      user: 'u',
      password: 'p@ss',
      database: 'dsm',
    });
    expect(parseDbUrl('sqlite::memory:')).toEqual({ dialect: 'sqlite', path: ':memory:' });
    expect(parseDbUrl('sqlite:data/x.db')).toEqual({
      dialect: 'sqlite',
      path: join(process.cwd(), 'data/x.db'),
    });
  });

  it('sqlite::memory: works', async () => {
    const x = createDb('sqlite::memory:');
    try {
      await migrate(x.db, x.dialect, 'tracker');
      const rows = await x.db.selectFrom('t_groups_info').select('group_name').execute();
      expect(rows).toEqual([{ group_name: 'group001' }]);
    } finally {
      await x.close();
    }
  });
});
