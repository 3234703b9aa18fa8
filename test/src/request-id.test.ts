/**
 * One request followed through every log: the gateway's request id (`X-Request-Id`, in its access
 * log) travels to the tracker and the storage that serve the request (REQUEST_CONTEXT, extension
 * frame 4), whose debug lines carry it as `rid`.
 */
import { readFileSync } from 'node:fs';
import type { RunningGateway } from '@dsm/gateway/node';
import { Command } from '@dsm/packets';
import { patternBytes } from '@dsm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestCluster, startUncachedGateway, type TestCluster } from './helpers.ts';

type Line = { msg?: string; rid?: string; command?: number; errno?: number };

describe('request id from the gateway to the nodes', () => {
  let t: TestCluster;
  let gw: RunningGateway;
  beforeAll(async () => {
    t = await startTestCluster('sqlite+memory', {
      trackers: 1,
      groups: ['group001'],
      storagesPerGroup: 2,
      env: { DSM_LOG_LEVEL: 'debug' },
    });
    await t.waitActive();
    gw = await startUncachedGateway(t);
  }, 60_000);
  afterAll(async () => {
    await gw?.close();
    await t?.stop();
  });

  /** The request lines of `role`'s logs that name `rid`, once they are written (≤ 5 s). */
  async function linesOf(role: string, rid: string, want: number[]): Promise<Line[]> {
    const files = [...t.cluster.nodes.values()].filter((n) => n.role === role).map((n) => n.logFile);
    let found: Line[] = [];
    for (const until = Date.now() + 5000; Date.now() < until; ) {
      found = files
        .flatMap((f) => readFileSync(f, 'utf8').split('\n'))
        .filter((l) => l.includes(rid))
        .map((l) => JSON.parse(l) as Line)
        .filter((l) => l.msg === 'request' && l.rid === rid);
      if (want.every((c) => found.some((l) => l.command === c))) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    return found;
  }

  it('an upload, a download and a resumable upload are found by their id in the tracker and storage logs', async () => {
    const tag = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
    const up = await fetch(`${gw.url}/files`, {
      method: 'POST',
      headers: { 'content-type': 'application/octet-stream', 'x-request-id': `up-${tag}` },
      body: patternBytes(4096, 3),
    });
    expect(up.status).toBe(201);
    expect(up.headers.get('x-request-id')).toBe(`up-${tag}`);
    const { id } = (await up.json()) as { id: string };

    const get = await fetch(`${gw.url}/files/${id}`, { headers: { 'x-request-id': `get-${tag}` } });
    expect(get.status).toBe(200);
    expect(Buffer.from(await get.arrayBuffer()).equals(Buffer.from(patternBytes(4096, 3)))).toBe(true);

    const created = await fetch(`${gw.url}/tus/`, {
      method: 'POST',
      headers: { 'tus-resumable': '1.0.0', 'upload-length': '5', 'x-request-id': `tus-${tag}` },
    });
    expect(created.status).toBe(201);
    const patch = await fetch(new URL(created.headers.get('location') as string, gw.url), {
      method: 'PATCH',
      headers: {
        'tus-resumable': '1.0.0',
        'upload-offset': '0',
        'content-type': 'application/offset+octet-stream',
        'x-request-id': `patch-${tag}`,
      },
      body: 'hello',
    });
    expect(patch.status).toBe(204);

    // the upload: routed by the tracker (12), stored by a storage (80)
    expect((await linesOf('tracker', `up-${tag}`, [Command.TRACKER_ADDRS])).map((l) => l.command)).toContain(
      Command.TRACKER_ADDRS,
    );
    const stored = await linesOf('storage', `up-${tag}`, [Command.STORAGE_UPLOAD_EXT]);
    expect(stored.map((l) => [l.command, l.errno])).toContainEqual([Command.STORAGE_UPLOAD_EXT, 0]);
    // the download: looked up (17, never routes; once per storage request here, with no
    // locate cache), stat (74) and bytes (72)
    const located = (await linesOf('tracker', `get-${tag}`, [Command.TRACKER_LOCATE])).map((l) => l.command);
    expect(located.length).toBeGreaterThan(0);
    expect(new Set(located)).toEqual(new Set([Command.TRACKER_LOCATE]));
    const read = (
      await linesOf('storage', `get-${tag}`, [Command.STORAGE_STAT, Command.STORAGE_DOWNLOAD])
    ).map((l) => l.command);
    expect(read).toContain(Command.STORAGE_STAT);
    expect(read).toContain(Command.STORAGE_DOWNLOAD);
    // tus: create (75) under the POST's id; offset (77), append (76) and commit (78) under the PATCH's
    expect(
      (await linesOf('storage', `tus-${tag}`, [Command.STORAGE_UPLOAD_CREATE])).map((l) => l.command),
    ).toContain(Command.STORAGE_UPLOAD_CREATE);
    const patched = (
      await linesOf('storage', `patch-${tag}`, [
        Command.STORAGE_UPLOAD_OFFSET,
        Command.STORAGE_UPLOAD_APPEND,
        Command.STORAGE_UPLOAD_COMMIT,
      ])
    ).map((l) => l.command);
    expect(patched).toEqual(
      expect.arrayContaining([
        Command.STORAGE_UPLOAD_OFFSET,
        Command.STORAGE_UPLOAD_APPEND,
        Command.STORAGE_UPLOAD_COMMIT,
      ]),
    );
    // and no other request of the run was given one of these ids
    const all = [...t.cluster.nodes.values()].flatMap((n) => readFileSync(n.logFile, 'utf8').split('\n'));
    const named = all.filter((l) => l.includes(tag)).map((l) => JSON.parse(l) as Line);
    for (const l of named) expect(l.rid?.endsWith(tag), JSON.stringify(l)).toBe(true);
    // requests the gateway made for no HTTP request (none here) would carry no rid: the id is
    // never carried over to the next request on a pooled connection
    const storageLines = all
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Line)
      .filter((l) => l.msg === 'request' && l.command !== undefined && l.command >= 70);
    expect(storageLines.filter((l) => l.rid === undefined && l.command !== Command.PING)).toEqual([]);
  });
});
