import { encodePublicId, newFileId } from '@dsm/client';
import { createDb } from '@dsm/db';
import type { RunningGateway } from '@dsm/gateway/node';
import { Errno } from '@dsm/packets';
import { rowCount } from '@dsm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BACKEND_NAMES, startTestCluster, startUncachedGateway, type TestCluster } from '../helpers.ts';

// Only an upload routes a new user: reads by users nobody ever uploaded as (anyone can make up
// public ids) must leave no t_router row behind, or a loop of GETs grows the table forever.

const routerRows = (database: string) => rowCount(() => createDb(database), 't_router');

const randomUser = () => `rnd-${Math.random().toString(36).slice(2)}`;

describe.each(BACKEND_NAMES)('reads of unrouted users on %s', (backend) => {
  let t: TestCluster;
  let gw: RunningGateway;
  beforeAll(async () => {
    t = await startTestCluster(backend, { trackers: 1, groups: ['group001'], storagesPerGroup: 2 });
    await t.waitActive(2);
    gw = await startUncachedGateway(t);
  }, 60_000);
  afterAll(async () => {
    await gw?.close();
    await t?.stop();
  });

  it('150 gateway GET/HEAD/meta requests for never-seen users are 404 problems and add no t_router row', async () => {
    const up = await fetch(`${gw.url}/files`, { method: 'POST', body: 'hello' });
    expect(up.status).toBe(201);
    const before = await routerRows(t.databases.tracker);
    expect(before).toBe(1);
    for (let i = 0; i < 50; i++) {
      for (const [method, suffix] of [
        ['GET', ''],
        ['HEAD', ''],
        ['GET', '/meta'],
      ] as const) {
        const id = encodePublicId({ appId: 'tnvideo', userId: randomUser(), fileId: newFileId() });
        const r = await fetch(`${gw.url}/files/${id}${suffix}`, { method });
        expect(r.status, `${method} ${suffix}`).toBe(404);
        if (method === 'GET') {
          expect(r.headers.get('content-type')).toBe('application/problem+json');
          expect(((await r.json()) as { code: string }).code).toBe('DSM_ERR_NOT_FOUND');
        }
      }
    }
    expect(await routerRows(t.databases.tracker)).toBe(before);
  });

  it('client stat, size, download and delete of never-seen users are NOT_FOUND and add no t_router row', async () => {
    const before = await routerRows(t.databases.tracker);
    for (let i = 0; i < 25; i++) {
      const ids = { appId: 'tnvideo', userId: randomUser(), fileId: newFileId() };
      for (const op of [
        () => t.client.stat(ids),
        () => t.client.size(ids),
        () => t.client.download(ids),
        () => t.client.delete(ids),
      ]) {
        await expect(op()).rejects.toMatchObject({ errno: Errno.NOT_FOUND });
      }
    }
    expect(await routerRows(t.databases.tracker)).toBe(before);
    // an upload still routes a new user
    await t.client.upload({
      appId: 'tnvideo',
      userId: randomUser(),
      source: {
        size: 1,
        open: async function* () {
          yield new Uint8Array([7]);
        },
      },
    });
    expect(await routerRows(t.databases.tracker)).toBe(before + 1);
  });
});
