import { createHash } from 'node:crypto';
import { DsmError, ErrorCode } from '@dsm/common/errors';
import { type Address, Errno, type FileStat } from '@dsm/packets';
import { describe, expect, it } from 'vitest';
import { MAX_BUFFERED_DOWNLOAD } from './clients.ts';
import { RemoteError } from './connection.ts';
import { DsmClient } from './dsm-client.ts';
import { newFileId } from './file-id.ts';
import { nodeTransport } from './node-transport.ts';
import type { Transport } from './transport.ts';

const noTransport = { connect: () => Promise.reject(new Error('not used')) } as unknown as Transport;
const a1: Address = { host: '127.0.0.1', port: 1 };
const a2: Address = { host: '127.0.0.1', port: 2 };
const stored: FileStat = { size: 10, mtimeMs: 1, sha256: new Uint8Array(32), contentType: 'x/y' };

/** A client whose storages time out on the first member after the commit, then say "exists". */
function lostReplyClient(storedSize = 10) {
  const c = new DsmClient({ trackers: [a1], transport: noTransport, locateCacheMs: 0 });
  c.tracker.storagesFor = async () => ({ group: 'g1', addrs: [a1, a2] });
  c.storage.uploadExt = async (a) => {
    if (a.port === 1) throw new DsmError(ErrorCode.TIMEOUT, 'reply timed out');
    throw new RemoteError(Errno.EXISTS, '[s2] INSERT Database Fail, Fileid: x');
  };
  c.storage.stat = async () => ({ ...stored, size: storedSize });
  return c;
}
const source = { size: 10, open: async function* () {} };

describe('DsmClient.upload after a lost reply', () => {
  it('takes "exists" on a retry of its own new file id as the earlier attempt stored', async () => {
    const r = await lostReplyClient().upload({ appId: 'app', userId: 'u', source });
    expect(r.stat).toEqual(stored);
    const fresh = await lostReplyClient().upload({
      appId: 'app',
      userId: 'u',
      fileId: newFileId(),
      freshFileId: true,
      source,
    });
    expect(fresh.group).toBe('g1');
  });

  it('keeps the error for a caller-chosen id, a first attempt, or another size', async () => {
    const given = lostReplyClient().upload({ appId: 'app', userId: 'u', fileId: newFileId(), source });
    await expect(given).rejects.toMatchObject({ errno: Errno.EXISTS });
    const otherSize = lostReplyClient(11).upload({ appId: 'app', userId: 'u', source });
    await expect(otherSize).rejects.toMatchObject({ errno: Errno.EXISTS });
    const c = lostReplyClient();
    c.storage.uploadExt = async () => {
      throw new RemoteError(Errno.EXISTS, '[s1] INSERT Database Fail, Fileid: x');
    };
    await expect(c.upload({ appId: 'app', userId: 'u', source })).rejects.toMatchObject({
      errno: Errno.EXISTS,
    });
  });
});

describe('DsmClient.upload when a killed storage left its claim on the file id', () => {
  /** a1 is killed mid-body (nothing stored; refused from then on); a2 answers BUSY for that id. */
  function busyClient(busyWaitsMs: number[] = []) {
    const c = new DsmClient({ trackers: [a1], transport: noTransport, locateCacheMs: 0, busyWaitsMs });
    c.tracker.storagesFor = async () => ({ group: 'g1', addrs: [a1, a2] });
    const claimed = new Set<string>();
    const tried: string[] = [];
    let s1Dead = false;
    c.storage.uploadExt = async (a, ids, _type, src) => {
      tried.push(`${a.port}:${ids.fileId}`);
      if (claimed.has(ids.fileId)) throw new RemoteError(Errno.BUSY, '[s2] Upload Busy, Fileid: x');
      if (a.port === 1) {
        if (s1Dead) throw new DsmError(ErrorCode.CONNECT, 'connection refused');
        for await (const _ of src.open()) break; // the body starts going out
        claimed.add(ids.fileId); // the claim a killed s1 leaves behind
        s1Dead = true;
        throw new DsmError(ErrorCode.SOCKET, 'connection reset');
      }
      return stored;
    };
    c.storage.stat = async () => {
      throw new RemoteError(Errno.NOT_FOUND, 'not found');
    };
    return { c, tried, expire: () => claimed.clear() };
  }

  it('starts over once under a fresh id when it made the id itself and the source is replayable', async () => {
    const { c, tried } = busyClient();
    const r = await c.upload({ appId: 'app', userId: 'u', source });
    expect(r.stat).toEqual(stored);
    // every member tried (and the tracker asked again) under the first id, then once more
    // under one fresh id, which a2 stored
    const ids = tried.map((t) => t.split(':')[1]);
    const distinct = [...new Set(ids)];
    expect(distinct).toHaveLength(2);
    expect(r.ids.fileId).toBe(distinct[1]);
    expect(tried.at(-1)).toBe(`2:${distinct[1]}`);
    expect(tried.filter((t) => t === `2:${distinct[0]}`).length).toBeGreaterThanOrEqual(1);
  });

  it("waits out the claim under a caller's fresh id, and gives up after the last wait", async () => {
    const { c, tried, expire } = busyClient([30, 30, 30]);
    const fileId = newFileId();
    const t0 = Date.now();
    const pending = c.upload({ appId: 'app', userId: 'u', fileId, freshFileId: true, source });
    setTimeout(expire, 40); // the dead holder's claim expires during the second wait
    const r = await pending;
    expect(Date.now() - t0).toBeGreaterThanOrEqual(55);
    expect(r.ids.fileId).toBe(fileId); // the caller's id, kept
    expect(new Set(tried.map((t) => t.split(':')[1]))).toEqual(new Set([fileId]));
    const never = busyClient([10, 10]).c.upload({
      appId: 'app',
      userId: 'u',
      fileId: newFileId(),
      freshFileId: true,
      source,
    });
    await expect(never).rejects.toMatchObject({ errno: Errno.BUSY });
  });

  it('keeps BUSY for a caller-chosen id and for a one-shot source', async () => {
    const given = busyClient().c.upload({ appId: 'app', userId: 'u', fileId: newFileId(), source });
    await expect(given).rejects.toMatchObject({ errno: Errno.BUSY });
    const once = busyClient().c.upload({
      appId: 'app',
      userId: 'u',
      source: { ...source, replayable: false },
    });
    await expect(once).rejects.toMatchObject({ code: ErrorCode.SOCKET });
  });
});

describe('DsmClient.upload of a one-shot source after a lost reply', () => {
  const body = new TextEncoder().encode('0123456789');
  const bodySha = new Uint8Array(createHash('sha256').update(body).digest());
  const hashing = { ...noTransport, sha256: nodeTransport.sha256 } as Transport;
  const oneShot = () => {
    let opens = 0;
    return {
      get opens() {
        return opens;
      },
      source: {
        size: body.length,
        replayable: false,
        open: async function* () {
          opens++;
          yield body;
        },
      },
    };
  };
  /** a1 takes the whole body, then the connection closes; `statOf` answers stat per member. */
  function client(
    statOf: (a: Address) => FileStat | Error,
    fail: Error = new DsmError(ErrorCode.SOCKET, 'closed'),
  ) {
    const c = new DsmClient({ trackers: [a1], transport: hashing, locateCacheMs: 0 });
    c.tracker.storagesFor = async () => ({ group: 'g1', addrs: [a1, a2] });
    const asked: number[] = [];
    c.storage.uploadExt = async (_a, _ids, _t, src) => {
      for await (const _ of src.open()) {
        // sent
      }
      throw fail;
    };
    c.storage.stat = async (a) => {
      asked.push(a.port);
      const r = statOf(a);
      if (r instanceof Error) throw r;
      return r;
    };
    return { c, asked };
  }
  const ours: FileStat = { size: body.length, mtimeMs: 1, sha256: bodySha, contentType: '' };

  it('returns the stored file when the group has it with the size and sha-256 sent', async () => {
    const s = oneShot();
    const { c, asked } = client(() => ours);
    const r = await c.upload({ appId: 'app', userId: 'u', source: s.source });
    expect(r.stat).toEqual(ours);
    expect(asked).toEqual([2]); // the other member first
    expect(s.opens).toBe(1);
    const t = client(
      (a) => (a.port === 2 ? new DsmError(ErrorCode.CONNECT, 'down') : ours),
      new DsmError(ErrorCode.TIMEOUT, 'slow'),
    );
    expect((await t.c.upload({ appId: 'app', userId: 'u', source: oneShot().source })).stat).toEqual(ours);
    expect(t.asked).toEqual([2, 1]);
  });

  it('keeps the error when the file is missing, differs, or the id is not its own', async () => {
    const missing = client(() => new RemoteError(Errno.NOT_FOUND, 'Read Database Fail'));
    await expect(
      missing.c.upload({ appId: 'app', userId: 'u', source: oneShot().source }),
    ).rejects.toMatchObject({
      code: ErrorCode.SOCKET,
    });
    expect(missing.asked).toEqual([2]);
    const longer = client(() => ({ ...ours, size: body.length + 1 }));
    await expect(
      longer.c.upload({ appId: 'app', userId: 'u', source: oneShot().source }),
    ).rejects.toMatchObject({
      code: ErrorCode.SOCKET,
    });
    // the caller's fresh id may have been sent before: the sha-256 decides too
    const other = client(() => ({ ...ours, sha256: new Uint8Array(32) }));
    await expect(
      other.c.upload({
        appId: 'app',
        userId: 'u',
        fileId: newFileId(),
        freshFileId: true,
        source: oneShot().source,
      }),
    ).rejects.toMatchObject({
      code: ErrorCode.SOCKET,
    });
    const same = client(() => ours);
    const r = await same.c.upload({
      appId: 'app',
      userId: 'u',
      fileId: newFileId(),
      freshFileId: true,
      source: oneShot().source,
    });
    expect(r.stat).toEqual(ours);
    const given = client(() => ours);
    const up = given.c.upload({ appId: 'app', userId: 'u', fileId: newFileId(), source: oneShot().source });
    await expect(up).rejects.toMatchObject({ code: ErrorCode.SOCKET });
    expect(given.asked).toEqual([]);
  });

  it('hashes nothing when it made the id itself: the size of its own fresh id decides', async () => {
    let hashers = 0;
    const counting = {
      ...noTransport,
      sha256: () => {
        hashers++;
        return nodeTransport.sha256!();
      },
    } as Transport;
    const c = new DsmClient({ trackers: [a1], transport: counting, locateCacheMs: 0 });
    c.tracker.storagesFor = async () => ({ group: 'g1', addrs: [a1, a2] });
    c.storage.uploadExt = async (_a, _ids, _t, src) => {
      for await (const _ of src.open()) {
        // sent
      }
      throw new DsmError(ErrorCode.SOCKET, 'closed');
    };
    c.storage.stat = async () => ours;
    expect((await c.upload({ appId: 'app', userId: 'u', source: oneShot().source })).stat).toEqual(ours);
    expect(hashers).toBe(0);
    await c.upload({
      appId: 'app',
      userId: 'u',
      fileId: newFileId(),
      freshFileId: true,
      source: oneShot().source,
    });
    expect(hashers).toBe(1);
  });

  it('never opens a one-shot source twice: the first failure after opening is the answer', async () => {
    const s = oneShot();
    const c = new DsmClient({ trackers: [a1], transport: hashing, locateCacheMs: 0 });
    c.tracker.storagesFor = async () => ({ group: 'g1', addrs: [a1, a2] });
    const tried: number[] = [];
    c.storage.uploadExt = async (a, _ids, _t, src) => {
      tried.push(a.port);
      if (a.port === 1) throw new DsmError(ErrorCode.CONNECT, 'refused'); // before opening: next member
      src.open();
      throw new RemoteError(Errno.DB_UNAVAILABLE, '[s2] INSERT Database Fail');
    };
    await expect(c.upload({ appId: 'app', userId: 'u', source: s.source })).rejects.toMatchObject({
      errno: Errno.DB_UNAVAILABLE,
    });
    expect(tried).toEqual([1, 2]);
  });
});

describe('DsmClient.upload of a replayable source after a lost reply', () => {
  const body = new TextEncoder().encode('abcdefghij');
  const bodySha = new Uint8Array(createHash('sha256').update(body).digest());
  const hashing = { ...noTransport, sha256: nodeTransport.sha256 } as Transport;
  const source = {
    size: body.length,
    open: async function* () {
      yield body;
    },
  };

  it('asks the group first and sends again only when the stored file is not its own', async () => {
    for (const [storedSha, sends] of [
      [bodySha, 1],
      [new Uint8Array(32), 2],
    ] as const) {
      const c = new DsmClient({ trackers: [a1], transport: hashing, locateCacheMs: 0 });
      c.tracker.storagesFor = async () => ({ group: 'g1', addrs: [a1, a2] });
      let sent = 0;
      const fresh = { size: body.length, mtimeMs: 2, sha256: bodySha, contentType: '' };
      c.storage.uploadExt = async (a, _ids, _t, src) => {
        for await (const _ of src.open()) {
          // sent
        }
        sent++;
        if (a.port === 1) throw new DsmError(ErrorCode.TIMEOUT, 'reply timed out');
        return fresh;
      };
      c.storage.stat = async () => ({ ...fresh, mtimeMs: 1, sha256: storedSha });
      // the caller's fresh id: the stored file's sha-256 tells whether it is this upload
      const r = await c.upload({ appId: 'app', userId: 'u', fileId: newFileId(), freshFileId: true, source });
      expect(sent).toBe(sends);
      expect(r.stat.mtimeMs).toBe(sends === 1 ? 1 : 2);
    }
  });
});

describe('StorageClient.downloadBytes', () => {
  /** A storage that answers every request with a reply frame of `bodyLength` bytes of 7. */
  async function fakeStorage(bodyLength: number) {
    const { createServer } = await import('node:net');
    const { Command, encodeFrame } = await import('@dsm/packets');
    const sockets = new Set<import('node:net').Socket>();
    const server = createServer((s) => {
      sockets.add(s);
      s.on('data', () => s.write(encodeFrame(Command.STORAGE_REPLY, new Uint8Array(bodyLength).fill(7))));
      s.on('error', () => {});
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as { port: number }).port;
    return {
      addr: { host: '127.0.0.1', port },
      close: () => {
        for (const s of sockets) s.destroy();
        return new Promise<void>((r) => server.close(() => r()));
      },
    };
  }
  const ids = { appId: 'app', userId: 'u', fileId: 'f' };

  it('refuses, before asking, a size it would not hold in memory', async () => {
    const c = new DsmClient({ trackers: [a1], transport: noTransport });
    for (const size of [0, -1, 1.5, MAX_BUFFERED_DOWNLOAD + 1, Number.MAX_SAFE_INTEGER]) {
      await expect(c.storage.downloadBytes(a1, { ...ids, offset: 0, size })).rejects.toMatchObject({
        code: ErrorCode.BAD_INPUT,
      });
    }
  });

  it('gives exactly the bytes asked for, and refuses a reply of another length', async () => {
    for (const [asked, sent, ok] of [
      [10, 10, true],
      [10, 12, false],
      [10, 4, false],
    ] as const) {
      const s = await fakeStorage(sent);
      const c = new DsmClient({ trackers: [a1], transport: nodeTransport, ioTimeoutMs: 500 });
      try {
        const got = c.storage.downloadBytes(s.addr, { ...ids, offset: 0, size: asked });
        if (ok) expect(await got).toEqual(new Uint8Array(asked).fill(7));
        else await expect(got).rejects.toMatchObject({ code: ErrorCode.PROTOCOL });
      } finally {
        await c.close();
        await s.close();
      }
    }
  });
});

describe('DsmClient.downloadBytes on a kept connection', () => {
  type Answer = 'ok' | 'error' | 'silent' | 'close' | 'short';
  /** A storage answering its requests in turn as `script` says (then 'ok'); counts connections. */
  async function scriptedStorage(script: Answer[], size: number) {
    const { createServer } = await import('node:net');
    const { Command, encodeFrame, encodeErrorReply, Status } = await import('@dsm/packets');
    const sockets = new Set<import('node:net').Socket>();
    let connections = 0;
    let requests = 0;
    const server = createServer((s) => {
      connections++;
      sockets.add(s);
      s.on('error', () => {});
      s.on('data', () => {
        const a = script[requests++] ?? 'ok';
        if (a === 'ok') s.write(encodeFrame(Command.STORAGE_REPLY, new Uint8Array(size).fill(requests)));
        else if (a === 'short') s.write(encodeFrame(Command.STORAGE_REPLY, new Uint8Array(size - 1)));
        else if (a === 'error') {
          const body = encodeErrorReply({ errno: Errno.NOT_FOUND, message: '[s1] File Not Exist' });
          s.end(encodeFrame(Command.STORAGE_REPLY, body, Status.ERROR));
        } else if (a === 'close') s.destroy();
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const addr = { host: '127.0.0.1', port: (server.address() as { port: number }).port };
    return {
      addr,
      get connections() {
        return connections;
      },
      get requests() {
        return requests;
      },
      close: () => {
        for (const s of sockets) s.destroy();
        return new Promise<void>((r) => server.close(() => r()));
      },
    };
  }
  const ids = { appId: 'app', userId: 'u', fileId: 'f' };

  async function withClient(
    script: Answer[],
    fn: (c: DsmClient, s: Awaited<ReturnType<typeof scriptedStorage>>) => Promise<void>,
  ) {
    const s = await scriptedStorage(script, 16);
    const c = new DsmClient({ trackers: [a1], transport: nodeTransport, ioTimeoutMs: 300 });
    c.tracker.storagesOf = async () => ({ group: 'g1', addrs: [s.addr] });
    try {
      await fn(c, s);
    } finally {
      await c.close();
      await s.close();
    }
  }

  it('reuses one connection for downloads one after another, each reply whole', async () => {
    await withClient([], async (c, s) => {
      for (let i = 1; i <= 5; i++)
        expect(await c.downloadBytes(ids, 0, 16)).toEqual(new Uint8Array(16).fill(i));
      expect(s.connections).toBe(1);
    });
  });

  it("sends on a kept connection in the caller's turn, and waits for a new one", async () => {
    await withClient([], async (c, s) => {
      let ran = false;
      const first = c.pool.use(s.addr, async () => {
        ran = true;
      });
      expect(ran).toBe(false); // no connection yet: it is opened first
      await first;
      expect(ran).toBe(true);
      ran = false;
      const second = c.pool.use(s.addr, async () => {
        ran = true;
      });
      expect(ran).toBe(true); // the kept one, at once
      await second;
      expect(s.connections).toBe(1);
    });
  });

  it("passes the storage's error reply and drops that connection", async () => {
    await withClient(['ok', 'error'], async (c, s) => {
      await c.downloadBytes(ids, 0, 16);
      const e = await c.downloadBytes(ids, 0, 16).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(RemoteError);
      expect(e).toMatchObject({ errno: Errno.NOT_FOUND });
      expect(await c.downloadBytes(ids, 0, 16)).toEqual(new Uint8Array(16).fill(3));
      expect(s.connections).toBe(2);
    });
  });

  it('asks again on a fresh connection when the kept one was closed by the storage', async () => {
    await withClient(['ok', 'close'], async (c, s) => {
      await c.downloadBytes(ids, 0, 16);
      expect(await c.downloadBytes(ids, 0, 16)).toEqual(new Uint8Array(16).fill(3));
      expect(s.requests).toBe(3);
      expect(s.connections).toBe(2);
    });
  });

  it('refuses a reply of another length (PROTOCOL) and times out a silent storage', async () => {
    await withClient(['ok', 'short', 'ok', 'silent', 'silent', 'silent'], async (c, s) => {
      await c.downloadBytes(ids, 0, 16);
      await expect(c.downloadBytes(ids, 0, 16)).rejects.toMatchObject({ code: ErrorCode.PROTOCOL });
      await c.downloadBytes(ids, 0, 16);
      expect(s.connections).toBe(2); // the short reply closed the first
      const t0 = Date.now();
      // the kept connection times out (a timeout is not retried on that storage at once, as a
      // closed kept connection is), then, after asking the tracker again, a fresh one
      await expect(c.downloadBytes(ids, 0, 16)).rejects.toMatchObject({ code: ErrorCode.TIMEOUT });
      expect(Date.now() - t0).toBeGreaterThanOrEqual(2 * 300 - 20);
      expect(s.requests).toBe(5);
      expect(s.connections).toBe(3);
    });
  });
});
