import { createDb } from '@dsm/db';
import { Command, decodeAddrsReply, Errno, encodeLocateRequest, Status } from '@dsm/packets';
import { BACKEND_NAMES, rowCount } from '@dsm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { routeCacheKey } from './group-router.ts';
import { addrs, ask, createBackend, FakeStorage, type TrackerBackend } from './test-support.ts';

const locate = (port: number, appId: string, userId: string, fileId = '') =>
  ask(port, Command.TRACKER_LOCATE, encodeLocateRequest({ appId, userId, fileId }));

const routerRowCount = (database: string) => rowCount(() => createDb(database), 't_router');

describe.each(BACKEND_NAMES)('TRACKER_LOCATE (17) on %s', (backendName) => {
  let backend: TrackerBackend;
  beforeAll(async () => {
    backend = await createBackend(backendName);
  });
  afterAll(async () => {
    await backend?.cleanup();
  });

  it('looks routes up without creating any: 300 unknown users leave t_router and the cache unchanged', async () => {
    const t = await backend.start();
    const s = await FakeStorage.active(t.port, { group: 'gloc', port: 31201, freeBytes: 1000 });
    const known = `known-${backendName}-${Math.random().toString(36).slice(2, 8)}`;
    const routed = await addrs(t.port, 'tnvideo', known);
    expect(routed.header.status).toBe(Status.OK);
    const before = await routerRowCount(backend.database);

    for (let i = 0; i < 300; i++) {
      const user = `rnd-${Math.random().toString(36).slice(2)}-${i}`;
      const r = await locate(t.port, 'tnvideo', user, 'f0000001');
      expect([r.header.status, r.errno]).toEqual([Status.ERROR, Errno.NOT_FOUND]);
      // the text a storage gives for a missing file: an unknown user is not told apart
      expect(r.message).toBe('[vm] Read Database Fail, Fileid: f0000001');
      if (i % 100 === 0) expect(await t.kv.get(routeCacheKey('tnvideo', user))).toBeNull();
    }
    expect(await routerRowCount(backend.database)).toBe(before);

    // a routed user gets the same answer as 12
    const found = await locate(t.port, 'tnvideo', known);
    expect(found.header.status).toBe(Status.OK);
    expect(decodeAddrsReply(found.body)).toEqual(decodeAddrsReply(routed.body));
    // unknown apps are refused as in 12
    const app = await locate(t.port, 'nosuchapp', known);
    expect(app.errno).toBe(Errno.UNKNOWN_APP);
    s.close();
  });
});
