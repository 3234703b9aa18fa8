import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { newFileId } from '@dsm/client';
import { createDb } from '@dsm/db';
import { until } from '@dsm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BACKEND_NAMES, finalFiles, startTestCluster, type TestCluster } from './helpers.ts';

/*
 * Small uploads are group-committed (nodes/storage/src/group-commit.ts) and take their ids from
 * ranges the storages reserve (extension 41). These tests kill storages in the middle of bursts
 * and restart them, on both backends.
 */

const TABLES = ['t_file_01', 't_file_02', 't_file_03'] as const;
const APP = 'tnvideo';

interface Row {
  id: string;
  file_path: string | null;
}

async function allRows(t: TestCluster): Promise<Row[]> {
  const h = createDb(t.databases.storage);
  try {
    const out: Row[] = [];
    for (const table of TABLES)
      out.push(...(await h.db.selectFrom(table).select(['id', 'file_path']).execute()));
    return out;
  } finally {
    await h.close();
  }
}

/** The id a final path was made from (`<d1>/<d2>/<d3>/<T>_<d4>`, base-512 digits in hex). */
function idOfPath(p: string): number {
  const m = /\/([0-9A-F]{3,})\/([0-9A-F]{3})\/([0-9A-F]{3})\/[0-9A-F]+_([0-9A-F]{3})$/.exec(p);
  if (!m) throw new Error(`not a final path: ${p}`);
  const [d1, d2, d3, d4] = m.slice(1).map((x) => Number.parseInt(x, 16)) as [number, number, number, number];
  return ((d1 * 512 + d2) * 512 + d3) * 512 + d4;
}

const source = (data: Buffer) => ({
  size: data.length,
  async *open() {
    yield data;
  },
});

describe.each(BACKEND_NAMES)('small uploads on %s', (backend) => {
  let t: TestCluster;
  const dataDir = () => join(t.dir, 'data', 'group001');
  const tmpDirOf = (port: number) => join(dataDir(), '.tmp', `${hostname()}-${port}`);

  beforeAll(async () => {
    t = await startTestCluster(backend, {
      trackers: 1,
      groups: ['group001'],
      storagesPerGroup: 2,
      // small ranges, so the bursts below use several of them
      extra: { storage: { idRangeSize: 16 } },
    });
    await t.waitActive(2);
  }, 90_000);
  afterAll(async () => {
    await t?.stop();
  });

  it('kill -9 during a burst: after restart every acknowledged file is there and nothing else', async () => {
    const victim = t.cluster.nodes.get('group001-s1')!;
    const addr = { host: victim.host, port: victim.port };
    const acked = new Map<string, Buffer>();
    const attempted = new Set<string>();
    let killed: Promise<void> | null = null;
    const worker = async () => {
      for (;;) {
        const fileId = newFileId();
        const data = randomBytes(4096);
        attempted.add(fileId);
        try {
          await t.client.storage.uploadExt(
            addr,
            { appId: APP, userId: `burst-${backend}`, fileId },
            '',
            source(data),
          );
        } catch {
          return; // the storage is gone
        }
        acked.set(fileId, data);
        if (acked.size >= 200 && !killed) killed = t.cluster.kill(victim.name);
      }
    };
    await Promise.all(Array.from({ length: 16 }, worker));
    await killed;
    expect(acked.size).toBeGreaterThanOrEqual(200);
    // uploads were in flight when the process died (each of the 16 workers ended on one)
    expect(attempted.size - acked.size).toBeGreaterThanOrEqual(1);

    await t.cluster.startNode(victim.name);
    // the restart resolves the commit journal (the temp folder) once the database answers
    await until(
      async () => readdirSync(tmpDirOf(victim.port)).length === 0,
      15_000,
      50,
      'an empty temp folder',
    );

    const rows = await allRows(t);
    const byId = new Map(rows.map((r) => [r.id, r]));
    for (const [fileId, data] of acked) {
      const row = byId.get(fileId);
      expect(row, `row of acknowledged ${fileId}`).toBeDefined();
      expect(Buffer.compare(readFileSync(row?.file_path as string), data), `bytes of ${fileId}`).toBe(0);
    }
    // no row without a file, no file without a row
    for (const r of rows) expect(existsSync(r.file_path as string), `file of row ${r.id}`).toBe(true);
    const files = finalFiles(dataDir()).sort();
    expect(files).toEqual(rows.map((r) => r.file_path as string).sort());
    // nothing of an unacknowledged upload survived unless its row did (then it is complete)
    for (const fileId of attempted) {
      const row = byId.get(fileId);
      if (row && !acked.has(fileId)) expect(statSync(row.file_path as string).size).toBe(4096);
    }
    await t.waitActive(2);
  }, 120_000);

  it('ids from ranges never repeat across two storages of a group and across kill -9 and restart', async () => {
    const names = ['group001-s1', 'group001-s2'];
    const upload = async (name: string, n: number) => {
      const node = t.cluster.nodes.get(name)!;
      await Promise.all(
        Array.from({ length: n }, () =>
          t.client.storage.uploadExt(
            { host: node.host, port: node.port },
            { appId: APP, userId: `ids-${backend}`, fileId: newFileId() },
            '',
            source(randomBytes(64)),
          ),
        ),
      );
    };
    for (let round = 0; round < 3; round++) {
      await Promise.all(names.map((n) => upload(n, 40)));
      // a restart drops what is left of both ranges (current and fetched ahead)
      await t.cluster.kill(names[round % 2] as string);
      await t.cluster.startNode(names[round % 2] as string);
    }
    await Promise.all(names.map((n) => upload(n, 40)));
    const rows = await allRows(t);
    const ids = rows.map((r) => idOfPath(r.file_path as string));
    expect(rows.length).toBeGreaterThanOrEqual(8 * 40);
    expect(new Set(ids).size).toBe(ids.length);
    await t.waitActive(2);
  }, 120_000);
});
