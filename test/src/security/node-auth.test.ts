import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type ClusterKey, DsmClient } from '@dsm/client';
import { nodeTransport } from '@dsm/client/node';
import { DsmError } from '@dsm/common';
import { parseGatewayConfig } from '@dsm/gateway';
import { startGateway } from '@dsm/gateway/node';
import {
  Command,
  Errno,
  encodeFrame,
  encodeHeader,
  encodeIdRequest,
  HEADER_LENGTH,
  parseAddress,
  REQUEST_SPECS,
} from '@dsm/packets';
import { RawConn } from '@dsm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { collect, patternSource, startTestCluster, type TestCluster } from '../helpers.ts';

// A cluster whose nodes all have auth.required, started by the same launcher as `dsm up`
// (separate node processes). The storage's own key is the first of its list (k2): it joins the
// tracker and takes ids from the id server with it.

const DSM = fileURLToPath(new URL('../../../cli/bin/dsm.js', import.meta.url));
const k1: ClusterKey = { id: 'k1', secret: new TextEncoder().encode('k1-secret-'.repeat(4)) };
const k2: ClusterKey = { id: 'k2', secret: new TextEncoder().encode('k2-secret-'.repeat(4)) };
const text = (k: ClusterKey) => new TextDecoder().decode(k.secret);
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

function dsm(
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [DSM, ...args], { env: { ...process.env, ...env } }, (e, out, err) =>
      resolve({ code: e ? Number((e as { code?: number }).code ?? 1) : 0, out, err }),
    );
  });
}

/** A request with a body of the command's minimum length (the listener refuses before decoding). */
function frameFor(command: number): Uint8Array {
  if (command === Command.ID_GET) return encodeFrame(command, encodeIdRequest('group001:0'));
  const spec = REQUEST_SPECS[command];
  if (!spec) throw new Error(`no spec for ${command}`);
  if (spec.kind === 'buffered') return encodeFrame(command, new Uint8Array(spec.min));
  // a streamed upload: header and prefix only, 1 MiB announced
  const f = new Uint8Array(HEADER_LENGTH + spec.prefix);
  encodeHeader({ bodyLength: spec.prefix + 2 ** 20, command, status: 0 }, f, 0);
  return f;
}

/** Scratch folders of this file (key files, configs), removed when its tests are done. */
const scratchDirs: string[] = [];
function scratch(prefix: string): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  scratchDirs.push(d);
  return d;
}
afterAll(() => {
  for (const d of scratchDirs) rmSync(d, { recursive: true, force: true });
});

describe('node-protocol auth on a running cluster (auth.required on every node)', () => {
  let t: TestCluster;
  let ports: { tracker: number; storage: number; id: number };
  let authed: DsmClient;

  beforeAll(async () => {
    const dir = scratch('dsm-keys-');
    const f1 = join(dir, 'k1.key');
    const f2 = join(dir, 'k2.key');
    writeFileSync(f1, `${text(k1)}\n`);
    writeFileSync(f2, `${text(k2)}\n`);
    const auth = {
      required: true,
      keys: [
        { id: 'k2', secretFile: f2 },
        { id: 'k1', secretFile: f1 },
      ],
    };
    t = await startTestCluster('sqlite+memory', {
      trackers: 1,
      groups: ['group001'],
      storagesPerGroup: 1,
      extra: { tracker: { auth }, storage: { auth }, id: { auth } },
    });
    ports = {
      tracker: t.cluster.nodes.get('tracker1')!.port,
      storage: t.cluster.nodes.get('group001-s1')!.port,
      id: t.cluster.nodes.get('id1')!.port,
    };
    authed = new DsmClient({
      trackers: t.cluster.addresses('tracker').map(parseAddress),
      transport: nodeTransport,
      auth: k1,
      locateCacheMs: 0,
    });
    // the storage joins with its own key: it becomes ACTIVE
    const deadline = Date.now() + 15_000;
    for (;;) {
      const s = await authed.tracker.status(parseAddress(`127.0.0.1:${ports.tracker}`)).catch(() => null);
      if (s?.groups.some((g) => g.storages.some((x) => x.state === 'ACTIVE'))) break;
      if (Date.now() > deadline) throw new Error('the storage never became ACTIVE with auth on');
      await new Promise((r) => setTimeout(r, 100));
    }
  }, 90_000);
  afterAll(async () => {
    await authed?.close();
    await t?.stop();
  });

  it('refuses unauthenticated upload, delete, resumable, join, beat, group list, status and id get with UNAUTHORIZED', async () => {
    const cases: [keyof typeof ports, number][] = [
      ['storage', Command.STORAGE_UPLOAD],
      ['storage', Command.STORAGE_UPLOAD_EXT],
      ['storage', Command.STORAGE_DELETE],
      ['storage', Command.STORAGE_UPLOAD_CREATE],
      ['storage', Command.STORAGE_UPLOAD_APPEND],
      ['storage', Command.STORAGE_UPLOAD_COMMIT],
      ['tracker', Command.TRACKER_JOIN],
      ['tracker', Command.TRACKER_JOIN_EXT],
      ['tracker', Command.TRACKER_BEAT],
      ['tracker', Command.TRACKER_BEAT_EXT],
      ['tracker', Command.TRACKER_GROUPS],
      ['tracker', Command.TRACKER_STATUS],
      ['id', Command.ID_GET],
    ];
    for (const [node, command] of cases) {
      const c = await RawConn.open(ports[node]);
      c.send(frameFor(command));
      const r = await c.readFrame();
      expect(r?.errno, `${node} ${command}`).toBe(Errno.UNAUTHORIZED);
      expect(r?.message, `${node} ${command}`).toMatch(
        new RegExp(
          `^\\[[^\\]]+\\] Authentication Required: command ${command} needs a connection authenticated`,
        ),
      );
      await c.closed;
      expect(c.isClosed, `${node} ${command}: closed after the refusal`).toBe(true);
    }
    // PING stays open (keepalived's check), and reads too (auth.reads is off)
    for (const port of Object.values(ports)) {
      const c = await RawConn.open(port);
      c.send(encodeFrame(Command.PING));
      expect((await c.readFrame())?.header.status).toBe(0);
      c.close();
    }
    const anon = new DsmClient({
      trackers: [parseAddress(`127.0.0.1:${ports.tracker}`)],
      transport: nodeTransport,
    });
    const e = await anon
      .upload({ appId: 'tnvideo', userId: 'anon', source: patternSource(10, 1) })
      .catch((x) => x);
    expect(e).toBeInstanceOf(DsmError);
    expect(e.code).toBe('DSM_ERR_UNAUTHORIZED');
    await anon.close();
  });

  it('an authenticated client uploads and downloads end to end (k1, while the nodes use k2)', async () => {
    const up = await authed.upload({
      appId: 'tnvideo',
      userId: 'auth-user',
      source: patternSource(300_000, 3),
    });
    const got = await collect((await authed.download(up.ids)).stream);
    expect(got.length).toBe(300_000);
    expect(sha(got)).toBe(sha(await collect(patternSource(300_000, 3).open())));
    await authed.delete(up.ids);
  });

  it('a client with a wrong secret is refused with DSM_ERR_UNAUTHORIZED', async () => {
    const wrong = new DsmClient({
      trackers: [parseAddress(`127.0.0.1:${ports.tracker}`)],
      transport: nodeTransport,
      auth: { id: 'k1', secret: randomBytes(32) },
    });
    const e = await wrong.tracker.status(parseAddress(`127.0.0.1:${ports.tracker}`)).catch((x) => x);
    expect(e).toBeInstanceOf(DsmError);
    expect([e.code, e.errno]).toEqual(['DSM_ERR_UNAUTHORIZED', Errno.UNAUTHORIZED]);
    await wrong.close();
  });

  it('the gateway authenticates to the nodes with cluster.keyFile (and fails without it)', async () => {
    const dir = scratch('dsm-gw-');
    writeFileSync(join(dir, 'cluster.key'), `${text(k1)}\n`);
    const base = { listen: '127.0.0.1:0', trackers: t.cluster.addresses('tracker'), locateCacheMs: 0 };
    const gw = await startGateway({
      ...parseGatewayConfig({ ...base, cluster: { keyId: 'k1', keyFile: 'cluster.key' } }),
      configDir: dir,
    } as ReturnType<typeof parseGatewayConfig>);
    const bare = await startGateway(parseGatewayConfig(base));
    try {
      const body = randomBytes(5000);
      const res = await fetch(`${gw.url}/files`, { method: 'POST', body });
      expect(res.status, await res.clone().text()).toBe(201);
      const { id } = (await res.json()) as { id: string };
      const back = Buffer.from(await (await fetch(`${gw.url}/files/${id}`)).arrayBuffer());
      expect(sha(back)).toBe(sha(body));
      // its caches are usable: the storages' delete log (81) and the tracker's status are read
      // over authenticated connections; without the key they cannot be, and nothing is cached
      await new Promise((r) => setTimeout(r, 2 * gw.core.cfg.invalidationPollMs));
      expect(await gw.core.cachesUsable()).toBe(true);
      expect(await bare.core.cachesUsable()).toBe(false);
      expect((await bare.core.metrics?.render())?.body).toMatch(
        /dsm_gateway_cache_invalidations_total\{kind="failed"\} [1-9]/,
      );
      const refused = await fetch(`${bare.url}/files`, { method: 'POST', body });
      // the end user did nothing wrong: a 503 naming the gateway's problem, no node text
      expect(refused.status).toBe(503);
      const problem = (await refused.json()) as { code: string; detail: string };
      expect(problem.code).toBe('DSM_ERR_CLUSTER_AUTH');
      expect(problem.detail).not.toMatch(/127\.0\.0\.1|Authentication/);
    } finally {
      await gw.close();
      await bare.close();
    }
  });

  it('dsm reads the key from a file or the environment, never from argv', async () => {
    const dir = scratch('dsm-cli-');
    const src = join(dir, 'f.bin');
    writeFileSync(src, randomBytes(1000));
    const keyFile = join(dir, 'cluster.key');
    writeFileSync(keyFile, `${text(k2)}\n`);
    const env = { DSM_TRACKERS: `127.0.0.1:${ports.tracker}`, DSM_KEY_ID: 'k2' };
    const none = await dsm(['upload', src], env);
    expect(none.code).not.toBe(0);
    expect(none.err).toMatch(/Authentication Required/);
    const byFile = await dsm(['upload', src, '--key-file', keyFile], env);
    expect(byFile.code, byFile.err).toBe(0);
    const byEnv = await dsm(['upload', src], { ...env, DSM_CLUSTER_KEY: text(k2) });
    expect(byEnv.code, byEnv.err).toBe(0);
    const noArgv = await dsm(['upload', src, '--key', text(k2)], env);
    expect(noArgv.code).not.toBe(0);
  });
});
