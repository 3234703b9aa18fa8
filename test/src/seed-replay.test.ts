import { Command, decodeAddrsReply, decodeErrorReply, fromHex, HEADER_LENGTH } from '@dsm/packets';
import { frameOf, loadSeedVectors, RawConn, type SeedVector } from '@dsm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestCluster, type TestCluster } from './helpers.ts';

describe('seed vectors replayed against a running cluster', () => {
  let t: TestCluster;
  beforeAll(async () => {
    t = await startTestCluster('sqlite+memory', { trackers: 1, groups: ['group001'], storagesPerGroup: 1 });
    await t.waitActive(1);
  }, 90_000);
  afterAll(async () => {
    await t?.stop();
  });

  it('answers every captured request with a reply of the same command, status and layout', async () => {
    const vectors = loadSeedVectors();
    expect(vectors.length).toBeGreaterThan(80);
    const ports = {
      tracker: t.cluster.nodes.get('tracker1')!.port,
      id: t.cluster.nodes.get('id1')!.port,
      storage: t.cluster.nodes.get('group001-s1')!.port,
    };
    const conns = new Map<number, RawConn>();
    const checked: string[] = [];
    for (let i = 0; i < vectors.length; i++) {
      const v = vectors[i]!;
      if (v.direction !== 'request') continue;
      // the captured replies to this request, in order
      const replies: SeedVector[] = [];
      for (let j = i + 1; j < vectors.length && vectors[j]!.direction === 'reply'; j++) {
        if (vectors[j]!.connection === v.connection) replies.push(vectors[j]!);
      }
      if (replies.length === 0) continue;
      let conn = conns.get(v.connection);
      if (!conn) {
        conn = await RawConn.open(ports[v.server], { noDelay: true });
        conns.set(v.connection, conn);
      }
      conn.send(frameOf(v));
      const got = await conn.readFrame();
      expect(got, `${v.name}: no reply`).not.toBeNull();
      const want = replies[0]!;
      const wantFrame = fromHex(want.frame_hex);
      expect(got!.header.command, v.name).toBe(want.command);
      expect(got!.header.status, v.name).toBe(want.status);
      const wantBody = wantFrame.subarray(HEADER_LENGTH);
      if (want.status !== 0) {
        const a = decodeErrorReply(got!.body);
        const b = decodeErrorReply(wantBody);
        // same text apart from the "[hostname] " prefix
        expect(a.message.replace(/^\[[^\]]*\] /, ''), v.name).toBe(b.message.replace(/^\[[^\]]*\] /, ''));
        // the server closes the connection after an error reply
        await conn.readFrame(2000);
        expect(conn.isClosed, `${v.name}: connection closed after error`).toBe(true);
        conns.delete(v.connection);
      } else if (v.command === Command.TRACKER_ADDRS) {
        const r = decodeAddrsReply(got!.body);
        expect(r.group).toBe(decodeAddrsReply(wantBody).group);
        expect(r.addrs.length).toBeGreaterThan(0);
      } else if (v.command === Command.TRACKER_GROUPS) {
        expect(new TextDecoder().decode(got!.body)).toMatch(/^COUNT OF GROUPS: \d+\n/);
      } else if (v.command === Command.ID_GET || v.command === Command.STORAGE_SIZE) {
        expect(got!.body.length, v.name).toBe(8);
        if (v.command === Command.STORAGE_SIZE) expect(Buffer.compare(got!.body, wantBody)).toBe(0);
      } else {
        // uploads, deletes, downloads: the same bytes (download data is the uploaded file)
        expect(Buffer.compare(Buffer.from(got!.body), Buffer.from(wantBody)), v.name).toBe(0);
      }
      checked.push(v.name);
    }
    for (const conn of conns.values()) conn.close();
    expect(checked.length).toBeGreaterThanOrEqual(38);
  });
});
