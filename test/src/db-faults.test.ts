import type { ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DsmClient, decodePublicId, encodePublicId, RemoteError } from '@dsm/client';
import { nodeTransport } from '@dsm/client/node';
import { Cluster, portCount } from '@dsm/cluster';
import { createDb } from '@dsm/db';
import { Errno, type FileIds, parseAddress } from '@dsm/packets';
import { patternBytes } from '@dsm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { collect, freePortRange, patternSource } from './helpers.ts';
import { PrivateMariadb, PrivateRedis } from './private-services.ts';

/**
 * Database and cache outages against a real cluster (separate node processes, one tracker,
 * one id server, two groups of one storage, one gateway) on PRIVATE MariaDB and Redis
 * instances that this test starts, kills and restarts by PID. The machine's shared services
 * (127.0.0.1:3306 and :6379) are never touched. No node is restarted at any point.
 */

const APP = 'tnvideo';
/** Longest a request may take while a backend is down (fail fast, no hang). */
const FAIL_FAST_MS = 5000;
/** Longest the cluster may take to serve again once the backend answers. */
const RECOVERY_MS = 10_000;
const PREFIX = 'dsmt:';
/** Database time limits of the nodes (URL options of @dsm/db; the defaults are 10 s / 5 s). */
const QUERY_TIMEOUT_MS = 3000;
const CONNECT_TIMEOUT_MS = 2000;
/** A request against a frozen database: a query timeout, a retry's connect timeout, margin. */
const FROZEN_BOUND_MS = 2 * QUERY_TIMEOUT_MS + CONNECT_TIMEOUT_MS + 2000;

const figures: string[] = [];
const figure = (s: string) => {
  figures.push(s);
  console.log(`[db-faults] ${s}`);
};

interface Acked {
  how: string;
  ids: FileIds;
  publicId: string;
  sha256: string;
  size: number;
}

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

async function timed<T>(p: Promise<T>): Promise<{ ms: number; ok: boolean; value?: T; error?: unknown }> {
  const t0 = performance.now();
  try {
    const value = await p;
    return { ms: Math.round(performance.now() - t0), ok: true, value };
  } catch (error) {
    return { ms: Math.round(performance.now() - t0), ok: false, error };
  }
}

/** Retries `f` every 50 ms until it succeeds; returns the ms it took (throws after `limitMs`). */
async function recoveryTime(what: string, limitMs: number, f: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  let last: unknown;
  for (;;) {
    try {
      await f();
      return Math.round(performance.now() - t0);
    } catch (e) {
      last = e;
    }
    if (performance.now() - t0 > limitMs) {
      throw new Error(`${what} did not recover within ${limitMs} ms; last error: ${String(last)}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('database and cache outages (private MariaDB and Redis)', () => {
  let tmp: string;
  let mariadb: PrivateMariadb | undefined;
  let redis: PrivateRedis | undefined;
  let cluster: Cluster | undefined;
  let client: DsmClient;
  let gw: string;
  let pids: Map<string, number | undefined>;
  const acked: Acked[] = [];
  const groups = ['group001', 'group002'];

  const nodeAlive = (name: string): boolean => {
    const n = cluster?.nodes.get(name) as { child: ChildProcess | null } | undefined;
    return !!n?.child && n.child.exitCode === null && n.child.signalCode === null;
  };
  const expectNoNodeRestarted = () => {
    for (const [name, pid] of pids) {
      expect(nodeAlive(name), `${name} is still running`).toBe(true);
      expect(cluster?.nodes.get(name)?.pid, `${name} kept its PID`).toBe(pid);
    }
  };

  const upload = async (userId: string, size: number, seed: number, how = 'client'): Promise<Acked> => {
    const up = await client.upload({ appId: APP, userId, source: patternSource(size, seed) });
    const a = { how, ids: up.ids, publicId: up.publicId, sha256: sha(patternBytes(size, seed)), size };
    acked.push(a);
    return a;
  };
  const readBack = async (a: Acked) => {
    const got = await collect((await client.download(a.ids)).stream);
    expect(got.length, a.publicId).toBe(a.size);
    expect(sha(got), a.publicId).toBe(a.sha256);
  };

  const gwUpload = (body: Buffer<ArrayBuffer>) =>
    fetch(`${gw}/files`, {
      method: 'POST',
      body,
      headers: { 'Content-Type': 'application/octet-stream' },
      signal: AbortSignal.timeout(20_000),
    });
  const gwUploadAcked = async (size: number, seed: number): Promise<Acked> => {
    const body = patternBytes(size, seed);
    const res = await gwUpload(body);
    if (res.status !== 201) throw new Error(`gateway upload: ${res.status} ${await res.text()}`);
    const j = (await res.json()) as { id: string; size: number; sha256: string };
    expect(j.sha256).toBe(sha(body));
    const a = { how: 'gateway', ids: decodePublicId(j.id), publicId: j.id, sha256: j.sha256, size };
    acked.push(a);
    return a;
  };
  const gwGet = (publicId: string) =>
    fetch(`${gw}/files/${publicId}`, { signal: AbortSignal.timeout(20_000) });
  const tusCreate = (length: number) =>
    fetch(`${gw}/tus/`, {
      method: 'POST',
      headers: { 'Tus-Resumable': '1.0.0', 'Upload-Length': String(length) },
      signal: AbortSignal.timeout(20_000),
    });

  /** A 503 application/problem+json reply with one of `codes`; returns the body. */
  const expectProblem503 = async (res: Response, codes: string[]) => {
    const text = await res.text();
    expect(res.status, text).toBe(503);
    expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    const p = JSON.parse(text) as { status: number; code: string; detail: string; type: string };
    expect(p.status).toBe(503);
    expect(codes).toContain(p.code);
    expect(p.type).toBe(
      `urn:dsm:problem:${p.code
        .replace(/^DSM_ERR_/, '')
        .toLowerCase()
        .replaceAll('_', '-')}`,
    );
    expect(p.detail.length).toBeGreaterThan(0);
    return p;
  };
  /** A protocol error reply (RemoteError) with errno among `errnos`, the node's description. */
  const expectRemote = (r: { ok: boolean; error?: unknown; ms: number }, errnos: number[], text?: RegExp) => {
    expect(r.ok).toBe(false);
    expect(r.error).toBeInstanceOf(RemoteError);
    const e = r.error as RemoteError;
    expect(errnos, `errno ${e.errno}: ${e.message}`).toContain(e.errno);
    // "[hostname] message" from the node
    expect(e.message).toMatch(/^\[[^\]]+\] \S/);
    if (text) expect(e.message).toMatch(text);
    expect(r.ms).toBeLessThan(FAIL_FAST_MS);
  };

  const routeOf = async (userId: string): Promise<string | undefined> => {
    const h = createDb(mariadb!.url('dsm_tracker'), { connectionLimit: 1 });
    try {
      const row = await h.db
        .selectFrom('t_router')
        .select('group_name')
        .where('appid', '=', APP)
        .where('userid', '=', userId)
        .executeTakeFirst();
      return row?.group_name ?? undefined;
    } finally {
      await h.close();
    }
  };
  const liveUploads = async (): Promise<number> => {
    const h = createDb(mariadb!.url('dsm_storage'), { connectionLimit: 1 });
    try {
      return (await h.db.selectFrom('t_upload').select('id').execute()).length;
    } finally {
      await h.close();
    }
  };

  beforeAll(async () => {
    const t0 = Date.now();
    tmp = mkdtempSync(join(tmpdir(), 'dsm-dbfaults-'));
    const shape = { trackers: 1, ids: 1, groups, storagesPerGroup: 1, gateways: 1 };
    // the cluster's ports first (the launcher's scheme), then the private MariaDB and Redis
    const base = await freePortRange(portCount(shape) + 2);
    // The binaries are required: a missing one fails here with the reason (never a skip).
    const [m, r] = await Promise.allSettled([
      PrivateMariadb.create(join(tmp, 'mariadb'), base + portCount(shape)),
      PrivateRedis.create(join(tmp, 'redis'), base + portCount(shape) + 1),
    ]);
    // keep whichever started, so afterAll stops it even when the other failed
    if (m.status === 'fulfilled') mariadb = m.value;
    if (r.status === 'fulfilled') redis = r.value;
    if (m.status === 'rejected') throw m.reason;
    if (r.status === 'rejected') throw r.reason;
    if (!mariadb || !redis) throw new Error('unreachable');
    expect([mariadb.port, redis.port]).not.toContain(3306);
    expect([mariadb.port, redis.port]).not.toContain(6379);
    const dbUrl = (name: string) =>
      `${mariadb!.url(name)}?queryTimeoutMs=${QUERY_TIMEOUT_MS}&connectTimeoutMs=${CONNECT_TIMEOUT_MS}`;
    figure(`private MariaDB :${mariadb.port} and Redis :${redis.port} up in ${Date.now() - t0} ms`);
    cluster = await Cluster.start({
      dir: join(tmp, 'cluster'),
      ...shape,
      basePort: base,
      beatIntervalMs: 300,
      beatTimeoutMs: 1500,
      databases: {
        tracker: dbUrl('dsm_tracker'),
        id: dbUrl('dsm_id'),
        storage: dbUrl('dsm_storage'),
      },
      cache: redis.url(PREFIX),
      // the gateway asks the cluster every time (no stat / locate reuse), tus sweeper off
      extra: { gateway: { statCacheMs: 0, locateCacheMs: 0, tusSweepIntervalMs: 0, ioTimeoutMs: 10_000 } },
      env: { DSM_LOG_LEVEL: process.env.DSM_LOG_LEVEL ?? 'warn' },
      onReady: (n) => figure(`${n.name} ready ${Date.now() - t0} ms after the test started`),
    });
    pids = new Map([...cluster.nodes.values()].map((n) => [n.name, n.pid]));
    const g = cluster.nodes.get('gateway1')!;
    gw = `http://${g.host}:${g.port}`;
    client = new DsmClient({
      trackers: cluster.addresses('tracker').map(parseAddress),
      transport: nodeTransport,
      locateCacheMs: 0,
      ioTimeoutMs: 10_000,
    });
    const deadline = Date.now() + 15_000;
    for (;;) {
      const s = await client.tracker.status().catch(() => null);
      const active = s?.groups.flatMap((x) => x.storages).filter((x) => x.state === 'ACTIVE').length ?? 0;
      if (active >= 2) break;
      if (Date.now() > deadline) throw new Error(`only ${active} of 2 storages became ACTIVE`);
      await new Promise((r) => setTimeout(r, 100));
    }
    figure(`cluster (5 node processes) on them ready ${Date.now() - t0} ms after the test started`);
  }, 120_000);

  afterAll(async () => {
    await client?.close().catch(() => {});
    await cluster?.stop().catch(() => {});
    await Promise.allSettled([mariadb?.stop('SIGKILL'), redis?.stop('SIGKILL')]);
    // DSM_KEEP_TMP=1 keeps the node logs and the database folder for a look after a failure
    if (tmp && !process.env.DSM_KEEP_TMP) rmSync(tmp, { recursive: true, force: true });
    else if (tmp) console.log(`[db-faults] kept ${tmp}`);
    if (figures.length > 0) console.log(`[db-faults] figures:\n  ${figures.join('\n  ')}`);
  });

  it('MariaDB killed: defined error replies and 503s while down, cached routes and metadata still serve, recovery without restarting a node', async () => {
    const db = mariadb!;
    // Before: a known user with a file whose metadata is cached (read once) and one that is not.
    const known = 'db-known';
    const cachedFile = await upload(known, 300_000, 1);
    await readBack(cachedFile);
    const uncachedFile = await upload(known, 200_000, 2);
    const viaGw = await gwUploadAcked(150_000, 3);
    const gwRead = await gwGet(viaGw.publicId);
    expect(gwRead.status).toBe(200);
    expect(sha(new Uint8Array(await gwRead.arrayBuffer()))).toBe(viaGw.sha256);

    await db.stop('SIGKILL');
    const downAt = performance.now();

    // New user: routing needs t_router → the tracker's defined error reply.
    const newUser = await timed(client.locate(APP, 'db-new-1', true));
    expectRemote(newUser, [Errno.DB_UNAVAILABLE], /Get Groupname Fail/);
    figure(`MariaDB down: new-user routing refused with errno DB_UNAVAILABLE in ${newUser.ms} ms`);

    // Known user: the route is in the Redis route cache (designed so): still answered.
    const knownRoute = await timed(client.locate(APP, known, true));
    expect(knownRoute.ok, String(knownRoute.error)).toBe(true);

    // Upload for the known user: no id segment / no metadata row → defined error reply.
    const up = await timed(client.upload({ appId: APP, userId: known, source: patternSource(50_000, 4) }));
    expectRemote(up, [Errno.DB_UNAVAILABLE, Errno.ID_UNAVAILABLE]);
    figure(`MariaDB down: upload refused with errno ${(up.error as RemoteError).errno} in ${up.ms} ms`);

    // stat / download of a file whose metadata is not cached: defined error, bounded time.
    expectRemote(await timed(client.stat(uncachedFile.ids)), [Errno.DB_UNAVAILABLE]);
    const dl = await timed(client.download(uncachedFile.ids));
    expectRemote(dl, [Errno.DB_UNAVAILABLE]);
    figure(`MariaDB down: download of an uncached file refused in ${dl.ms} ms`);

    // A file whose metadata is in the cache still downloads, byte-equal (seed quirk 7).
    await readBack(cachedFile);

    // Gateway: 503 problem+json with a stable code.
    const gwUp = await timed(gwUpload(patternBytes(40_000, 5)));
    expect(gwUp.ok).toBe(true);
    const pUp = await expectProblem503(gwUp.value!, ['DSM_ERR_DB_UNAVAILABLE', 'DSM_ERR_ID_UNAVAILABLE']);
    expect(gwUp.ms).toBeLessThan(FAIL_FAST_MS);
    const gwDl = await timed(gwGet(uncachedFile.publicId));
    await expectProblem503(gwDl.value!, ['DSM_ERR_DB_UNAVAILABLE']);
    expect(gwDl.ms).toBeLessThan(FAIL_FAST_MS);
    const gwTus = await tusCreate(1000);
    await expectProblem503(gwTus, ['DSM_ERR_DB_UNAVAILABLE']);
    figure(
      `MariaDB down: gateway POST /files → 503 ${pUp.code} in ${gwUp.ms} ms, GET → 503 in ${gwDl.ms} ms`,
    );
    const cachedViaGw = await gwGet(viaGw.publicId);
    expect(cachedViaGw.status).toBe(200);
    expect(sha(new Uint8Array(await cachedViaGw.arrayBuffer()))).toBe(viaGw.sha256);
    expect((await fetch(`${gw}/healthz`)).status).toBe(200);
    expectNoNodeRestarted();
    figure(`MariaDB was down for ${Math.round(performance.now() - downAt)} ms`);

    // Restart on the same data folder and port; nodes are left alone.
    const t0 = performance.now();
    await db.start();
    const serverUp = Math.round(performance.now() - t0);
    const routing = await recoveryTime('new-user routing', RECOVERY_MS, () =>
      client.locate(APP, 'db-new-1', true),
    );
    const uploads = await recoveryTime('client uploads', RECOVERY_MS, () => upload(known, 60_000, 6));
    const gwUploads = await recoveryTime('gateway uploads', RECOVERY_MS, () => gwUploadAcked(70_000, 7));
    figure(
      `MariaDB restarted (crash recovery): answering after ${serverUp} ms; then new-user routing ` +
        `back after ${routing} ms, client upload after +${uploads} ms, gateway upload after +${gwUploads} ms`,
    );
    expect(await routeOf('db-new-1')).toMatch(/^group00[12]$/);
    await readBack(uncachedFile);
    const back = await gwGet(uncachedFile.publicId);
    expect(back.status).toBe(200);
    expect(sha(new Uint8Array(await back.arrayBuffer()))).toBe(uncachedFile.sha256);
    await readBack(await upload('db-new-2', 80_000, 8));
    expectNoNodeRestarted();
  });

  it('MariaDB frozen (SIGSTOP): requests fail within the query timeout instead of hanging, and recover on SIGCONT', async () => {
    const db = mariadb!;
    const known = 'db-known';
    const uncached = await upload(known, 100_000, 21);
    const viaGw = await gwUploadAcked(30_000, 22);
    const first = await gwGet(viaGw.publicId); // its metadata is cached from now on
    expect(first.status).toBe(200);
    await first.arrayBuffer();
    process.kill(db.pid!, 'SIGSTOP');
    const frozenAt = performance.now();
    try {
      // All at once, as a burst of users would: each gets its error reply within the bound.
      const [route, st, gwGetR, gwPostR] = await Promise.all([
        timed(client.locate(APP, 'db-frozen-new', true)),
        timed(client.stat(uncached.ids)),
        timed(gwGet(uncached.publicId)),
        timed(gwUpload(patternBytes(20_000, 23))),
      ]);
      for (const r of [route, st]) {
        expect(r.ok).toBe(false);
        expect((r.error as RemoteError).errno, String(r.error)).toBe(Errno.DB_UNAVAILABLE);
        expect(r.ms).toBeLessThan(FROZEN_BOUND_MS);
      }
      await expectProblem503(gwGetR.value!, ['DSM_ERR_DB_UNAVAILABLE']);
      await expectProblem503(gwPostR.value!, ['DSM_ERR_DB_UNAVAILABLE', 'DSM_ERR_ID_UNAVAILABLE']);
      for (const r of [gwGetR, gwPostR]) expect(r.ms).toBeLessThan(FROZEN_BOUND_MS);
      figure(
        `MariaDB frozen (query timeout ${QUERY_TIMEOUT_MS} ms, connect ${CONNECT_TIMEOUT_MS} ms): new-user routing ` +
          `refused in ${route.ms} ms, stat in ${st.ms} ms, gateway GET 503 in ${gwGetR.ms} ms, POST 503 in ${gwPostR.ms} ms`,
      );
      // Cached metadata still serves while the database is frozen.
      const cached = await gwGet(viaGw.publicId);
      expect(cached.status).toBe(200);
      expect(sha(new Uint8Array(await cached.arrayBuffer()))).toBe(viaGw.sha256);
      expectNoNodeRestarted();
    } finally {
      process.kill(db.pid!, 'SIGCONT');
    }
    const frozenFor = Math.round(performance.now() - frozenAt);
    const back = await recoveryTime('routing after SIGCONT', RECOVERY_MS, () =>
      client.locate(APP, 'db-frozen-new', true),
    );
    const upBack = await recoveryTime('uploads after SIGCONT', RECOVERY_MS, () => upload(known, 40_000, 24));
    figure(
      `MariaDB frozen for ${frozenFor} ms; after SIGCONT routing back in ${back} ms, uploads +${upBack} ms`,
    );
    await readBack(uncached);
    expectNoNodeRestarted();
  });

  it('Redis stopped: routing falls back to t_router, tus answers 503, the cache is used again once Redis is back', async () => {
    const r = redis!;
    const known = 'redis-known';
    const knownGroup = (await client.locate(APP, known, true)).group;
    const routeKey = (u: string) => `${PREFIX}tracker:route:${APP}:${u}`;
    expect(await r.rawGet(routeKey(known))).toBe(knownGroup);
    const before = await upload(known, 120_000, 11);
    await readBack(before);
    const uploadsBefore = await liveUploads();

    await r.stop('SIGTERM');
    const downAt = performance.now();

    // A known user still gets its group (from t_router), fast.
    const k = await timed(client.locate(APP, known, true));
    expect(k.ok, String(k.error)).toBe(true);
    expect(k.value?.group).toBe(knownGroup);
    expect(k.ms).toBeLessThan(FAIL_FAST_MS);
    // A new user is assigned a group, recorded in t_router.
    const n = await timed(client.locate(APP, 'redis-new-1', true));
    expect(n.ok, String(n.error)).toBe(true);
    expect(groups).toContain(n.value?.group);
    expect(await routeOf('redis-new-1')).toBe(n.value?.group);
    figure(`Redis down: known-user routing from t_router in ${k.ms} ms, new user assigned in ${n.ms} ms`);
    // Repeated lookups stay fast (no reconnect wait per request).
    const again = await timed(
      (async () => {
        for (let i = 0; i < 20; i++) await client.locate(APP, known, true);
      })(),
    );
    expect(again.ok).toBe(true);
    figure(`Redis down: 20 routed lookups in ${again.ms} ms`);

    // Uploads and downloads through the storages go on (metadata from the database).
    await readBack(before);
    await readBack(await upload('redis-new-1', 90_000, 12));
    await readBack(await upload(known, 90_000, 13));
    // REST uploads through the gateway need no cache.
    await gwUploadAcked(50_000, 14);

    // tus keeps its state in Redis: a clean 503, and no upload left behind on the storage.
    const tus = await timed(tusCreate(1000));
    expect(tus.ok).toBe(true);
    await expectProblem503(tus.value!, ['DSM_ERR_CACHE_UNAVAILABLE']);
    expect(tus.ms).toBeLessThan(FAIL_FAST_MS);
    expect(await liveUploads()).toBe(uploadsBefore);
    const ready = await fetch(`${gw}/readyz`);
    await expectProblem503(ready, ['DSM_ERR_NOT_READY']);
    figure(`Redis down: tus creation → 503 DSM_ERR_CACHE_UNAVAILABLE in ${tus.ms} ms`);
    expectNoNodeRestarted();
    figure(`Redis was down for ${Math.round(performance.now() - downAt)} ms`);

    // Back on the same port (empty: no persistence); no node restarted.
    const t0 = performance.now();
    await r.start();
    const serverUp = Math.round(performance.now() - t0);
    // The tracker writes routes to the cache again.
    const cacheBack = await recoveryTime('tracker route cache', RECOVERY_MS, async () => {
      await client.locate(APP, known, true);
      if ((await r.rawGet(routeKey(known))) !== knownGroup) throw new Error('route not cached');
    });
    // The storages cache metadata again.
    const metaBack = await recoveryTime('storage metadata cache', RECOVERY_MS, async () => {
      await client.stat(before.ids);
      if (
        (await r.rawGet(
          `${PREFIX}storage:meta:${before.ids.fileId}:${before.ids.appId}:${before.ids.userId}`,
        )) === null
      ) {
        throw new Error('metadata not cached');
      }
    });
    let tusUrl = '';
    const tusBack = await recoveryTime('gateway tus', RECOVERY_MS, async () => {
      const res = await tusCreate(64_000);
      if (res.status !== 201) throw new Error(`tus create: ${res.status}`);
      tusUrl = new URL(res.headers.get('location')!, gw).toString();
    });
    figure(
      `Redis restarted: answering after ${serverUp} ms; tracker route cache written again after ` +
        `${cacheBack} ms, storage metadata cache +${metaBack} ms, gateway tus creation +${tusBack} ms`,
    );
    expect((await fetch(`${gw}/readyz`)).status).toBe(200);

    // A tus upload end to end.
    const body = patternBytes(64_000, 15);
    const patch = await fetch(tusUrl, {
      method: 'PATCH',
      body,
      headers: {
        'Tus-Resumable': '1.0.0',
        'Upload-Offset': '0',
        'Content-Type': 'application/offset+octet-stream',
      },
    });
    expect(patch.status, await patch.clone().text()).toBe(204);
    const id = patch.headers.get('dsm-file-id')!;
    expect(id).toBeTruthy();
    acked.push({ how: 'tus', ids: decodePublicId(id), publicId: id, sha256: sha(body), size: body.length });
    // The route of a user assigned while Redis was down is cached once asked again.
    await client.locate(APP, 'redis-new-1', true);
    expect(await r.rawGet(routeKey('redis-new-1'))).toBe(n.value?.group);
    expectNoNodeRestarted();
  });

  it('nothing acknowledged was lost, and no node was restarted', async () => {
    expect(acked.length).toBeGreaterThanOrEqual(10);
    for (const a of acked) {
      await readBack(a);
      const res = await gwGet(a.publicId);
      expect(res.status, `${a.how} ${a.publicId}`).toBe(200);
      expect(sha(new Uint8Array(await res.arrayBuffer())), `${a.how} ${a.publicId}`).toBe(a.sha256);
      expect(encodePublicId(a.ids)).toBe(a.publicId);
    }
    figure(`all ${acked.length} acknowledged uploads read back byte-equal (client and gateway)`);
    expectNoNodeRestarted();
  });
});
