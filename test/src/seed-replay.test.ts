import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import {
  bufferedUpTo,
  Command,
  decodeAddrsReply,
  decodeErrorReply,
  type decodeHeader,
  FrameReader,
  fromHex,
  HEADER_LENGTH,
} from '@dsm/packets';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestCluster, type TestCluster } from './helpers.ts';

interface Vector {
  name: string;
  direction: 'request' | 'reply';
  command: number;
  status: number;
  frame_hex: string;
  connection: number;
  server: 'tracker' | 'id' | 'storage';
}

const VECTORS_FILE = fileURLToPath(new URL('../../../shared/reference/seed-vectors.json', import.meta.url));

function loadVectors(): Vector[] {
  try {
    return JSON.parse(readFileSync(VECTORS_FILE, 'utf8')) as Vector[];
  } catch (e) {
    throw new Error(`seed vectors are required at ${VECTORS_FILE}: ${(e as Error).message}`);
  }
}

/** Reads one whole reply frame (any command/status, bodies up to 16 MiB) or null on close. */
function frameReaderFor(sock: Socket) {
  const reader = new FrameReader(() => bufferedUpTo(16 * 1024 * 1024));
  const queue: { header: ReturnType<typeof decodeHeader>; body: Uint8Array }[] = [];
  let closed = false;
  let wake: (() => void) | null = null;
  sock.on('data', (c) => {
    for (const ev of reader.push(c))
      if (ev.type === 'frame') queue.push({ header: ev.header, body: ev.body });
    wake?.();
  });
  sock.on('close', () => {
    closed = true;
    wake?.();
  });
  return {
    async next(timeoutMs = 5000) {
      const deadline = Date.now() + timeoutMs;
      while (queue.length === 0 && !closed && Date.now() < deadline) {
        await new Promise<void>((r) => {
          wake = r;
          setTimeout(r, 50);
        });
      }
      return queue.shift() ?? null;
    },
    get closed() {
      return closed;
    },
  };
}

describe('seed vectors replayed against a running cluster', () => {
  let t: TestCluster;
  beforeAll(async () => {
    t = await startTestCluster('embedded', { trackers: 1, groups: ['group001'], storagesPerGroup: 1 });
    await t.waitActive(1);
  }, 90_000);
  afterAll(async () => {
    await t?.stop();
  });

  it('answers every captured request with a reply of the same command, status and layout', async () => {
    const vectors = loadVectors();
    expect(vectors.length).toBeGreaterThan(80);
    const ports = {
      tracker: t.cluster.nodes.get('tracker1')!.port,
      id: t.cluster.nodes.get('id1')!.port,
      storage: t.cluster.nodes.get('group001-s1')!.port,
    };
    const sockets = new Map<number, { sock: Socket; frames: ReturnType<typeof frameReaderFor> }>();
    const checked: string[] = [];
    for (let i = 0; i < vectors.length; i++) {
      const v = vectors[i]!;
      if (v.direction !== 'request') continue;
      // the captured replies to this request, in order
      const replies: Vector[] = [];
      for (let j = i + 1; j < vectors.length && vectors[j]!.direction === 'reply'; j++) {
        if (vectors[j]!.connection === v.connection) replies.push(vectors[j]!);
      }
      if (replies.length === 0) continue;
      let conn = sockets.get(v.connection);
      if (!conn) {
        const sock = connect(ports[v.server], '127.0.0.1');
        sock.setNoDelay(true);
        await new Promise((r) => sock.once('connect', r));
        conn = { sock, frames: frameReaderFor(sock) };
        sockets.set(v.connection, conn);
      }
      conn.sock.write(fromHex(v.frame_hex));
      const got = await conn.frames.next();
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
        await conn.frames.next(2000);
        expect(conn.frames.closed, `${v.name}: connection closed after error`).toBe(true);
        sockets.delete(v.connection);
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
    for (const { sock } of sockets.values()) sock.destroy();
    expect(checked.length).toBeGreaterThanOrEqual(38);
  });
});
