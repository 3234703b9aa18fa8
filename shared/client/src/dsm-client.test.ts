import { DsmError, ErrorCode } from '@dsm/common/errors';
import { type Address, Errno, type FileStat } from '@dsm/packets';
import { describe, expect, it } from 'vitest';
import { RemoteError } from './connection.ts';
import { DsmClient } from './dsm-client.ts';
import { newFileId } from './file-id.ts';
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
