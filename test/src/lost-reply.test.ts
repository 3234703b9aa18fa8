// Lost upload replies, for real: a TCP proxy between the client and the storages forwards an
// upload whole and then drops the storage's reply (the storage really committed), or cuts or
// truncates the body (the storage never commits). DsmClient must answer success with the file in
// the first case, exactly once, and keep the error with nothing stored in the others; the
// gateway's REST upload (a body that cannot be replayed) gets the same through DsmClient.
import { createHash } from 'node:crypto';
import { createServer, connect as netConnect, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { DsmClient, decodePublicId, RemoteError, type Transport, type UploadSource } from '@dsm/client';
import { nodeTransport } from '@dsm/client/node';
import { ErrorCode } from '@dsm/common/errors';
import { createDb, FILE_TABLES } from '@dsm/db';
import { parseGatewayConfig } from '@dsm/gateway';
import { type RunningGateway, startGateway } from '@dsm/gateway/node';
import { Command, Errno, type FileIds, parseAddress, toHex } from '@dsm/packets';
import { patternBytes, storedFiles } from '@dsm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BACKEND_NAMES, collect, startTestCluster, type TestCluster } from './helpers.ts';

type Fault =
  /** forward the whole upload, then close both sides when the storage's reply comes */
  | 'drop-reply'
  /** the same, with a TCP reset towards the client */
  | 'reset-reply'
  /** forward the whole upload, swallow the reply and keep the connection open (client times out) */
  | 'hold-reply'
  /** forward half the body to the storage and close it; take the rest from the client, then close */
  | 'truncate-body'
  /** forward half the body, then close both sides */
  | 'cut-body';

const UPLOADS: number[] = [Command.STORAGE_UPLOAD, Command.STORAGE_UPLOAD_EXT];

/**
 * One proxy per storage. Frames from the client are parsed (header, then the body's length) so
 * the fault hits exactly the next upload frame, on whichever storage it goes to; every other
 * request (stat, download, …) passes untouched.
 */
class FaultProxies {
  armed: Fault | null = null;
  readonly seen = { faults: [] as Fault[], repliesDropped: 0, stats: 0 };
  readonly #servers: Server[] = [];
  readonly #sockets = new Set<Socket>();
  /** storage port → proxy port */
  readonly redirect = new Map<number, number>();

  async add(targetPort: number): Promise<void> {
    const server = createServer((c) => this.#conn(c, targetPort));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    this.#servers.push(server);
    this.redirect.set(targetPort, (server.address() as { port: number }).port);
  }

  /** Connections to a proxied storage go through its proxy. */
  transport(): Transport {
    return {
      connect: (host, port, o) => nodeTransport.connect(host, this.redirect.get(port) ?? port, o),
      sha256: nodeTransport.sha256,
    };
  }

  #conn(client: Socket, targetPort: number): void {
    const server = netConnect({ host: '127.0.0.1', port: targetPort, noDelay: true });
    client.setNoDelay(true);
    for (const s of [client, server]) {
      this.#sockets.add(s);
      s.on('error', () => {});
      s.on('close', () => this.#sockets.delete(s));
    }
    let swallowing = false; // truncate-body: the storage side is gone, the client is still sending
    client.on('close', () => server.destroy());
    server.on('close', () => {
      if (!swallowing) client.destroy();
    });

    let header = Buffer.alloc(0);
    let cur: { fault: Fault | null; total: number; left: number } | null = null;
    let last: { fault: Fault | null } | null = null;
    client.on('data', (chunk: Buffer) => {
      let off = 0;
      while (off < chunk.length) {
        if (!cur) {
          const take = Math.min(10 - header.length, chunk.length - off);
          header = Buffer.concat([header, chunk.subarray(off, off + take)]);
          off += take;
          if (header.length < 10) return;
          const total = Number(header.readBigInt64BE(0));
          const command = header[8] as number;
          let fault: Fault | null = null;
          if (UPLOADS.includes(command) && this.armed) {
            fault = this.armed;
            this.armed = null;
            this.seen.faults.push(fault);
          }
          if (command === Command.STORAGE_STAT) this.seen.stats++;
          server.write(header);
          header = Buffer.alloc(0);
          cur = { fault, total, left: total };
          last = cur;
          if (total === 0) cur = null;
          continue;
        }
        const n = Math.min(cur.left, chunk.length - off);
        const piece = chunk.subarray(off, off + n);
        off += n;
        const before = cur.total - cur.left;
        cur.left -= n;
        if (cur.fault === 'cut-body' || cur.fault === 'truncate-body') {
          const half = Math.floor(cur.total / 2);
          if (!swallowing && before < half) server.write(piece.subarray(0, half - before));
          if (before + n >= half) {
            if (cur.fault === 'cut-body') {
              client.destroy();
              server.destroy();
              return;
            }
            if (!swallowing) {
              swallowing = true;
              server.destroy();
            }
            if (cur.left === 0) {
              client.destroy(); // the client sent everything; its reply never comes
              return;
            }
          }
        } else {
          server.write(piece);
        }
        if (cur.left === 0) cur = null;
      }
    });
    server.on('data', (chunk: Buffer) => {
      const f = last?.fault;
      if (f === 'drop-reply' || f === 'reset-reply' || f === 'hold-reply') {
        this.seen.repliesDropped++;
        if (f === 'drop-reply') {
          client.destroy();
          server.destroy();
        } else if (f === 'reset-reply') {
          client.resetAndDestroy();
          server.destroy();
        }
        return; // hold-reply: swallowed; the client's I/O timeout ends it
      }
      client.write(chunk);
    });
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await Promise.all(this.#servers.map((s) => new Promise((r) => s.close(r))));
  }
}

/** A source that can be read once, as a gateway request body streamed through. */
function oneShot(bytes: Uint8Array): UploadSource & { opens: number } {
  const src = {
    size: bytes.length,
    replayable: false,
    opens: 0,
    async *open() {
      src.opens++;
      if (src.opens > 1) throw new Error('opened twice');
      for (let i = 0; i < bytes.length; i += 64 * 1024) yield bytes.subarray(i, i + 64 * 1024);
    },
  };
  return src;
}

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

describe.each(BACKEND_NAMES)('lost upload replies on %s', (backend) => {
  let t: TestCluster;
  let proxies: FaultProxies;
  let client: DsmClient;
  let gateway: RunningGateway;
  let n = 0;

  /** Rows for a file id over the three file tables. */
  async function rows(fileId: string): Promise<number> {
    const h = createDb(t.databases.storage);
    try {
      let count = 0;
      for (const table of FILE_TABLES) {
        const r = await h.db.selectFrom(table).select('id').where('id', '=', fileId).execute();
        count += r.length;
      }
      return count;
    } finally {
      await h.close();
    }
  }

  /** Regular files in the group folders (committed, temp and partial), locks and probes aside. */
  const dataFiles = (): string[] => storedFiles(join(t.dir, 'data'));

  /** The folder listing once it stops changing (a storage removes its temp file after a cut). */
  async function settledFiles(): Promise<string[]> {
    let last = dataFiles();
    for (let i = 0; i < 30; i++) {
      await new Promise((r) => setTimeout(r, 100));
      const now = dataFiles();
      if (now.join('\n') === last.join('\n') && i >= 2) return now;
      last = now;
    }
    return last;
  }

  async function expectStoredOnce(ids: FileIds, bytes: Uint8Array, before: string[]) {
    const back = await collect((await t.client.download(ids)).stream);
    expect(sha(back)).toBe(sha(bytes));
    expect(await rows(ids.fileId)).toBe(1);
    const added = (await settledFiles()).filter((f) => !before.includes(f));
    expect(added).toHaveLength(1);
    expect(sha(await collect((await t.client.download(ids)).stream))).toBe(sha(bytes));
  }

  async function expectNothingStored(fileIdsBefore: string[], fileId?: string) {
    expect(await settledFiles()).toEqual(fileIdsBefore);
    if (fileId) expect(await rows(fileId)).toBe(0);
  }

  beforeAll(async () => {
    t = await startTestCluster(backend, { trackers: 1, groups: ['group001'], storagesPerGroup: 2 });
    await t.waitActive(2);
    proxies = new FaultProxies();
    for (const a of t.cluster.addresses('storage')) await proxies.add(parseAddress(a).port);
    client = new DsmClient({
      trackers: t.cluster.addresses('tracker').map(parseAddress),
      transport: proxies.transport(),
      locateCacheMs: 0,
      ioTimeoutMs: 2000,
    });
    gateway = await startGateway(
      parseGatewayConfig({
        listen: '127.0.0.1:0',
        trackers: t.cluster.addresses('tracker'),
        cache: 'memory:',
        statCacheMs: 0,
        locateCacheMs: 0,
      }),
      { client },
    );
  }, 90_000);

  afterAll(async () => {
    await gateway?.close();
    await client?.close();
    await proxies?.close();
    await t?.stop();
  });

  for (const fault of ['drop-reply', 'reset-reply', 'hold-reply'] as const) {
    it(`${fault}: a one-shot upload whose reply is lost after the commit succeeds, stored once`, async () => {
      const bytes = patternBytes(300 * 1024 + 7, ++n);
      const before = await settledFiles();
      const src = oneShot(bytes);
      const statsBefore = proxies.seen.stats;
      const dropped = proxies.seen.repliesDropped;
      proxies.armed = fault;
      const r = await client.upload({ appId: 'tnvideo', userId: `lost-${backend}`, source: src });
      expect(proxies.seen.faults.at(-1)).toBe(fault);
      expect(proxies.armed).toBeNull();
      expect(proxies.seen.repliesDropped).toBe(dropped + 1); // the storage did reply: it committed
      expect(proxies.seen.stats).toBeGreaterThan(statsBefore); // and the group was asked
      expect(src.opens).toBe(1);
      expect(r.stat.size).toBe(bytes.length);
      expect(toHex(r.stat.sha256)).toBe(sha(bytes));
      await expectStoredOnce(r.ids, bytes, before);
    });
  }

  it('truncate-body: the whole body was sent but the storage got half: the error stands, nothing stored', async () => {
    const bytes = patternBytes(200 * 1024, ++n);
    const before = await settledFiles();
    const statsBefore = proxies.seen.stats;
    proxies.armed = 'truncate-body';
    const err = await client
      .upload({ appId: 'tnvideo', userId: `lost-${backend}`, source: oneShot(bytes) })
      .then(
        () => null,
        (e: unknown) => e,
      );
    expect(proxies.seen.faults.at(-1)).toBe('truncate-body');
    expect(err).toMatchObject({ code: ErrorCode.SOCKET });
    expect(proxies.seen.stats).toBeGreaterThan(statsBefore); // asked, and told "not found"
    await expectNothingStored(before);
  });

  it('cut-body: the connection is cut before the body is complete: an error, no file, no row', async () => {
    const bytes = patternBytes(2 * 1024 * 1024, ++n);
    const before = await settledFiles();
    proxies.armed = 'cut-body';
    let fileId = '';
    const src = oneShot(bytes);
    const err = await client
      .upload({ appId: 'tnvideo', userId: `lost-${backend}`, source: src }, () => {})
      .then(
        (r) => {
          fileId = r.ids.fileId;
          return null;
        },
        (e: unknown) => e,
      );
    expect(proxies.seen.faults.at(-1)).toBe('cut-body');
    expect(err).toMatchObject({ code: ErrorCode.SOCKET });
    expect(src.opens).toBe(1); // a one-shot body is not sent twice
    expect(fileId).toBe('');
    await expectNothingStored(before);
  });

  it('a given (not fresh) file id is not claimed from a stat after a lost reply', async () => {
    const bytes = patternBytes(50 * 1024, ++n);
    // a file id may not contain "+" (FILE_ID_PATTERN)
    const ids = {
      appId: 'tnvideo',
      userId: `lost-${backend}`,
      fileId: `given-${backend.replace('+', '-')}-${Date.now()}`,
    };
    proxies.armed = 'drop-reply';
    const up = client.upload({ ...ids, source: oneShot(bytes) });
    await expect(up).rejects.toMatchObject({ code: ErrorCode.SOCKET });
    // it was stored all the same (the storage committed): the caller owns that id and decides
    expect(await rows(ids.fileId)).toBe(1);
    const st = await t.client.stat(ids);
    expect(st.size).toBe(bytes.length);
  });

  it('gateway POST /files: a lost reply after the commit answers 201 with the stored file, once', async () => {
    const bytes = patternBytes(400 * 1024 + 3, ++n);
    const before = await settledFiles();
    proxies.armed = 'drop-reply';
    const r = await fetch(`${gateway.url}/files`, { method: 'POST', body: bytes });
    expect(proxies.seen.faults.at(-1)).toBe('drop-reply');
    expect(r.status).toBe(201);
    const body = (await r.json()) as { id: string; size: number; sha256: string };
    expect(body).toMatchObject({ size: bytes.length, sha256: sha(bytes) });
    const back = Buffer.from(await (await fetch(`${gateway.url}/files/${body.id}`)).arrayBuffer());
    expect(sha(back)).toBe(sha(bytes));
    await expectStoredOnce(decodePublicId(body.id), bytes, before);
  });

  it('gateway POST /files: a body the storage got only half of answers an error, nothing stored', async () => {
    const bytes = patternBytes(200 * 1024, ++n);
    const before = await settledFiles();
    proxies.armed = 'truncate-body';
    const r = await fetch(`${gateway.url}/files`, { method: 'POST', body: bytes });
    expect(proxies.seen.faults.at(-1)).toBe('truncate-body');
    expect(r.status).toBeGreaterThanOrEqual(500);
    expect(r.headers.get('content-type')).toBe('application/problem+json');
    await expectNothingStored(before);
  });

  it('without faults the proxies pass everything (control)', async () => {
    const bytes = patternBytes(10_000, ++n);
    const r = await client.upload({ appId: 'tnvideo', userId: `lost-${backend}`, source: oneShot(bytes) });
    expect(toHex(r.stat.sha256)).toBe(sha(bytes));
    await expect(client.stat({ ...r.ids, fileId: `${r.ids.fileId}x` })).rejects.toBeInstanceOf(RemoteError);
    await expect(client.stat({ ...r.ids, fileId: `${r.ids.fileId}x` })).rejects.toMatchObject({
      errno: Errno.NOT_FOUND,
    });
  });
});
