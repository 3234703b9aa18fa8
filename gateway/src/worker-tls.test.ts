import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { DsmClient } from '@dsm/client';
import { createNodeTransport } from '@dsm/client/node';
import { parseAddress } from '@dsm/packets';
import { startTestCluster, type TestCluster, until } from '@dsm/testkit';
import { Miniflare } from 'miniflare';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildWorker, compatibilityDate, patternBytes } from './test-support.ts';

// The Worker's link to the nodes for real: the bundle of `wrangler deploy --dry-run` (offline),
// run in Miniflare (workerd), against a cluster whose tracker, storage and id server all require
// the cluster key (auth.required, and auth.reads: downloads too) and listen with TLS only
// (tls.certFile/keyFile: a certificate for 127.0.0.1 signed by a CA made here with openssl).
//
// workerd does not read the system's or Node's CA list for `connect()`: a socket goes out
// through the Worker's global outbound, a workerd network service whose `tlsOptions` say whom
// to trust. Each Worker here gets its own (Miniflare `outboundService: { network }`): loopback
// only, trusting the test CA (or, for one Worker, another CA). The system CA store is untouched.

const KiB = 1024;
const MiB = 1024 * KiB;
const KEY_ID = 'k1';
const SECRET = 'worker-tls-cluster-key-0123456789abcdef';
/** A refusal must come from the nodes, not from a timeout: the Worker's I/O timeout is far above this. */
const PROMPT_MS = 5000;
const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

let dir: string;
let out: string;
let t: TestCluster;
let mf: Miniflare;
let base: string;
let caPem: string;
/** The last OUTPUT_MAX characters workerd wrote (stdout and stderr). */
let runtimeOutput = '';
const OUTPUT_MAX = 1024 * 1024;
let nodes: { name: string; admin: string; logFile: string }[];

/** Runs openssl (a missing openssl is a failure naming it). */
function openssl(args: string[]): void {
  try {
    execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (e) {
    throw new Error(`openssl ${args[0]} failed (is openssl installed?): ${(e as Error).message}`);
  }
}

/** A CA (key + self-signed certificate) in `dir`. */
function makeCa(name: string): void {
  openssl([
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-days',
    '1',
    '-subj',
    `/CN=dsm ${name}`,
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
    '-keyout',
    `${name}.key`,
    '-out',
    `${name}.crt`,
  ]);
}

/** The nodes' certificate: 127.0.0.1 and localhost, signed by the test CA. */
function makeNodeCert(): void {
  openssl([
    'req',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-subj',
    '/CN=dsm-node',
    '-keyout',
    'node.key',
    '-out',
    'node.csr',
  ]);
  writeFileSync(
    join(dir, 'node.ext'),
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n',
  );
  openssl([
    'x509',
    '-req',
    '-in',
    'node.csr',
    '-CA',
    'ca.crt',
    '-CAkey',
    'ca.key',
    '-CAcreateserial',
    '-days',
    '1',
    '-extfile',
    'node.ext',
    '-out',
    'node.crt',
  ]);
}

/** One Worker of the Miniflare instance: its bindings and the CA its outbound network trusts. */
function worker(name: string, o: { tls: 'on' | 'off'; key?: string; trust: string }) {
  return {
    name,
    // mf.dispatchFetch('http://<name>.test/…') reaches this Worker
    routes: [`${name}.test/*`],
    modules: true,
    scriptPath: join(out, 'worker.js'),
    modulesRoot: out,
    compatibilityDate: compatibilityDate(),
    compatibilityFlags: ['nodejs_compat'],
    // connect() goes out through this network: loopback only, trusting `trust` (PEM)
    outboundService: { network: { allow: ['local'], tlsOptions: { trustedCertificates: [o.trust] } } },
    bindings: {
      DSM_TRACKERS: t.cluster.addresses('tracker').join(','),
      DSM_LOG_LEVEL: 'warn',
      ...(o.key === undefined ? {} : { DSM_CLUSTER_KEY: o.key }),
      DSM_GATEWAY: {
        auth: { allowAnonymousUploads: true },
        cluster: { keyId: KEY_ID, tls: o.tls },
        statCacheMs: 0,
        locateCacheMs: 0,
        uploadBlockBytes: 256 * KiB,
        // every read goes to the storage over the link under test (no slices in the Cache API)
        edgeCache: { enabled: false },
      },
    },
  };
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'dsm-worker-tls-'));
  out = join(dir, 'dist');
  makeCa('ca');
  makeCa('other-ca');
  makeNodeCert();
  caPem = readFileSync(join(dir, 'ca.crt'), 'utf8');
  writeFileSync(join(dir, 'cluster.key'), `${SECRET}\n`);
  const security = {
    auth: { required: true, reads: true, keys: [{ id: KEY_ID, secretFile: join(dir, 'cluster.key') }] },
    // the listener speaks TLS only; caFile: the node's own connections (storage → tracker, id)
    tls: { certFile: join(dir, 'node.crt'), keyFile: join(dir, 'node.key'), caFile: join(dir, 'ca.crt') },
    admin: { listen: '127.0.0.1:0' },
  };
  const [built, cluster] = await Promise.allSettled([
    buildWorker(out),
    startTestCluster('sqlite+memory', {
      trackers: 1,
      groups: ['group001'],
      storagesPerGroup: 1,
      extra: { tracker: security, storage: security, id: security },
      // debug: the nodes log each authenticated connection and each failed TLS handshake
      env: { DSM_LOG_LEVEL: 'debug' },
    }),
  ]);
  if (cluster.status === 'fulfilled') t = cluster.value; // stopped by afterAll whatever happens next
  if (built.status === 'rejected') throw built.reason;
  if (cluster.status === 'rejected') throw cluster.reason;
  nodes = [...t.cluster.nodes.values()].map((n) => ({
    name: n.name,
    admin: n.ready.admin as string,
    logFile: n.logFile,
  }));
  // the storage joins over TLS with the key: ACTIVE, as seen by a client with both
  const client = new DsmClient({
    trackers: t.cluster.addresses('tracker').map(parseAddress),
    transport: createNodeTransport({ tls: { ca: caPem } }),
    auth: { id: KEY_ID, secret: new TextEncoder().encode(SECRET) },
    locateCacheMs: 0,
  });
  try {
    const tracker = parseAddress(t.cluster.addresses('tracker')[0] as string);
    await until(
      async () => {
        const s = await client.tracker.status(tracker).catch(() => null);
        return !!s?.groups.some((g) => g.storages.some((x) => x.state === 'ACTIVE'));
      },
      20_000,
      100,
      'the storage to become ACTIVE over TLS with the cluster key',
    );
  } finally {
    await client.close();
  }
  const otherCa = readFileSync(join(dir, 'other-ca.crt'), 'utf8');
  mf = new Miniflare({
    host: '127.0.0.1',
    port: 0,
    // workerd's own output (its socket errors, the Workers' console), kept for the checks below
    handleRuntimeStdio(stdout: Readable, stderr: Readable) {
      for (const stream of [stdout, stderr]) {
        stream.on('data', (chunk: Buffer) => {
          runtimeOutput = (runtimeOutput + chunk.toString('utf8')).slice(-OUTPUT_MAX);
          process.stderr.write(chunk);
        });
      }
    },
    workers: [
      // the first is the one on mf.ready's URL
      worker('tls', { tls: 'on', key: SECRET, trust: caPem }),
      worker('wrong-key', { tls: 'on', key: 'not-the-cluster-key-0123456789abcdef!', trust: caPem }),
      worker('no-key', { tls: 'on', trust: caPem }),
      worker('no-tls', { tls: 'off', key: SECRET, trust: caPem }),
      worker('other-ca', { tls: 'on', key: SECRET, trust: otherCa }),
    ],
  });
  base = (await mf.ready).toString().replace(/\/$/, '');
}, 120_000);

afterAll(async () => {
  await mf?.dispose();
  await t?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Sum of a node's samples of metric `name` that carry every one of `labels` (e.g. `reason="auth_failed"`). */
async function metric(node: string, name: string, ...labels: string[]): Promise<number> {
  const n = nodes.find((x) => x.name === node);
  if (!n) throw new Error(`no node ${node}`);
  const text = await (await fetch(`${n.admin}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^(\w+)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    const have = (m?.[2] ?? '').split(',');
    if (m && m[1] === name && labels.every((l) => have.includes(l))) sum += Number(m[3]);
  }
  return sum;
}

const refused = (node: string, reason = '') =>
  metric(node, 'dsm_node_refused_total', ...(reason ? [`reason="${reason}"`] : []));

/** The node's log lines (pino JSON) whose `msg` is `msg`. */
function logLines(node: string, msg: string): Record<string, unknown>[] {
  const n = nodes.find((x) => x.name === node);
  if (!n) throw new Error(`no node ${node}`);
  return readFileSync(n.logFile, 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((l) => l.msg === msg);
}

interface Refusal {
  status: number;
  problem: { code: string; detail: string; requestId: string };
  ms: number;
}

/** A request to one of the Worker variants that must fail: its problem, timed. */
async function via(
  name: string,
  path: string,
  init?: { method: string; body: Uint8Array },
): Promise<Refusal> {
  const started = Date.now();
  // the Worker's route (see `worker`) picks it
  const r = await mf.dispatchFetch(`http://${name}.test${path}`, init);
  const body = await r.text();
  const ms = Date.now() - started;
  expect(r.headers.get('content-type'), body).toBe('application/problem+json');
  return { status: r.status, problem: JSON.parse(body), ms };
}

/** What the Worker logged about a failed request (its `internal` text: the cause it hides from the client). */
async function internalOf(requestId: string): Promise<string> {
  let found = '';
  await until(
    async () => {
      for (const line of runtimeOutput.split('\n')) {
        if (!line.startsWith('{') || !line.includes(requestId)) continue;
        const l = JSON.parse(line) as { requestId?: string; internal?: string };
        if (l.requestId === requestId && l.internal) found = l.internal;
      }
      return found !== '';
    },
    5000,
    50,
    `the Worker's log line of request ${requestId}`,
  );
  return found;
}

let fileId = '';

describe('the Worker in Miniflare over TLS with the cluster key (auth.required + reads, TLS-only nodes)', () => {
  it('uploads and downloads byte-exact (whole, ranges) through the TLS + auth link', async () => {
    const data = patternBytes(3 * MiB + 77, 41);
    const up = await fetch(`${base}/files?filename=clip.mp4`, {
      method: 'POST',
      body: data,
      headers: { 'content-type': 'video/mp4' },
    });
    expect(up.status, await up.clone().text()).toBe(201);
    const reply = (await up.json()) as { id: string; url: string; size: number; sha256: string };
    expect(reply).toMatchObject({ size: data.length, sha256: sha256(data) });
    fileId = reply.id;

    const whole = await fetch(reply.url);
    expect(whole.status).toBe(200);
    expect(whole.headers.get('content-length')).toBe(String(data.length));
    expect(Buffer.from(await whole.arrayBuffer()).equals(data)).toBe(true);

    const from = 1 * MiB + 5;
    const to = 2 * MiB + 1000;
    const part = await fetch(reply.url, { headers: { Range: `bytes=${from}-${to}` } });
    expect(part.status).toBe(206);
    expect(part.headers.get('content-range')).toBe(`bytes ${from}-${to}/${data.length}`);
    expect(Buffer.from(await part.arrayBuffer()).equals(data.subarray(from, to + 1))).toBe(true);

    const suffix = await fetch(reply.url, { headers: { Range: 'bytes=-100' } });
    expect(suffix.status).toBe(206);
    expect(Buffer.from(await suffix.arrayBuffer()).equals(data.subarray(data.length - 100))).toBe(true);

    // a body of unknown length: the storage's block-wise resumable commands, over the same link
    const chunked = patternBytes(600 * KiB + 3, 42);
    const r = await fetch(`${base}/files`, {
      method: 'POST',
      body: new Blob([chunked]).stream(),
      duplex: 'half',
    } as RequestInit);
    expect(r.status).toBe(201);
    const c = (await r.json()) as { url: string; sha256: string };
    expect(c.sha256).toBe(sha256(chunked));
    expect(Buffer.from(await (await fetch(c.url)).arrayBuffer()).equals(chunked)).toBe(true);
  });

  it('the nodes saw only authenticated connections on their TLS listeners, nothing refused', async () => {
    // the storage's connections are the Worker's alone (the tracker's also come from the
    // storage's beats and the test's client, which hold the key too)
    for (const node of ['tracker1', 'group001-s1']) {
      const authed = logLines(node, 'authenticated');
      expect(authed.length, node).toBeGreaterThan(0);
      expect(authed.every((l) => l.keyId === KEY_ID && String(l.peer).startsWith('127.0.0.1:'))).toBe(true);
      // every connection that got past the TLS handshake proved the key
      await until(
        async () =>
          (await metric(node, 'dsm_node_connections_total')) === logLines(node, 'authenticated').length,
        5000,
        50,
        `every connection of ${node} to be authenticated`,
      );
      expect(logLines(node, 'TLS handshake failed'), node).toEqual([]);
      expect(await refused(node), node).toBe(0);
    }
    // the storage served the Worker's uploads and reads (reads need the key here: auth.reads)
    expect(await metric('group001-s1', 'dsm_node_requests_total', 'status="ok"')).toBeGreaterThan(4);
    expect(
      await metric('group001-s1', 'dsm_node_requests_total', 'command="STORAGE_DOWNLOAD"', 'status="ok"'),
    ).toBeGreaterThanOrEqual(4);
  });
});

describe('a Worker the nodes must refuse', () => {
  const upload = () => ({ method: 'POST', body: randomBytes(2000) });

  it('a wrong DSM_CLUSTER_KEY: 503 DSM_ERR_CLUSTER_AUTH for uploads and reads; the nodes count auth_failed', async () => {
    expect(fileId).not.toBe('');
    const before = await refused('tracker1', 'auth_failed');
    const logged = logLines('tracker1', 'authentication refused').length;
    for (const [path, init] of [
      ['/files', upload()],
      [`/files/${fileId}`, undefined],
    ] as const) {
      const r = await via('wrong-key', path, init);
      expect(r.status, path).toBe(503);
      expect(r.problem.code).toBe('DSM_ERR_CLUSTER_AUTH');
      // no node text, no address in what the client sees; the Worker's log has the node's word
      expect(r.problem.detail).not.toMatch(/127\.0\.0\.1|Authentication/);
      expect(await internalOf(r.problem.requestId)).toMatch(/Authentication Failed/);
      expect(r.ms).toBeLessThan(PROMPT_MS);
    }
    expect(await refused('tracker1', 'auth_failed')).toBeGreaterThanOrEqual(before + 2);
    expect(logLines('tracker1', 'authentication refused').length).toBeGreaterThanOrEqual(logged + 2);
  });

  it('no DSM_CLUSTER_KEY: 503 DSM_ERR_CLUSTER_AUTH for uploads and reads; the nodes count unauthenticated', async () => {
    const before = await refused('tracker1', 'unauthenticated');
    const logged = logLines('tracker1', 'unauthenticated request refused').length;
    for (const [path, init] of [
      ['/files', upload()],
      [`/files/${fileId}`, undefined],
    ] as const) {
      const r = await via('no-key', path, init);
      expect(r.status, path).toBe(503);
      expect(r.problem.code).toBe('DSM_ERR_CLUSTER_AUTH');
      expect(await internalOf(r.problem.requestId)).toMatch(/Authentication Required/);
      expect(r.ms).toBeLessThan(PROMPT_MS);
    }
    expect(await refused('tracker1', 'unauthenticated')).toBeGreaterThanOrEqual(before + 2);
    expect(logLines('tracker1', 'unauthenticated request refused').length).toBeGreaterThanOrEqual(logged + 2);
  });

  it('cluster.tls "off" against TLS-only nodes: a prompt 503, and the node logs the failed handshake', async () => {
    const badFrames = await refused('tracker1', 'bad_frame');
    const handshakes = logLines('tracker1', 'TLS handshake failed').length;
    const r = await via('no-tls', '/files', upload());
    expect(r.status).toBe(503);
    expect(r.problem.code).toBe('DSM_ERR_SOCKET');
    expect(await internalOf(r.problem.requestId)).toMatch(/closed by the server/);
    expect(r.ms).toBeLessThan(PROMPT_MS);
    await until(
      async () => logLines('tracker1', 'TLS handshake failed').length > handshakes,
      5000,
      50,
      'the tracker to log the failed handshake',
    );
    // the clear-text frame never reached the protocol: nothing was read as a bad frame
    expect(await refused('tracker1', 'bad_frame')).toBe(badFrames);
  });

  it("a Worker that does not trust the nodes' CA refuses their certificate: a prompt 503, no command sent", async () => {
    const authed = logLines('tracker1', 'authenticated').length;
    const refusals = await refused('tracker1');
    const r = await via('other-ca', '/files', upload());
    expect(r.status).toBe(503);
    expect(r.problem.code).toBe('DSM_ERR_CONNECT');
    expect(r.ms).toBeLessThan(PROMPT_MS);
    // workerd checked the certificate against the CA it was given and hung up
    await until(
      async () =>
        /TLS peer's certificate is not trusted; reason = unable to get local issuer certificate/.test(
          runtimeOutput,
        ),
      5000,
      50,
      "workerd's error for the untrusted certificate",
    );
    // workerd (kj) checks the chain once the handshake is over and hangs up before its first
    // byte: the node saw a connection that never authenticated and never sent a command
    expect(logLines('tracker1', 'authenticated').length).toBe(authed);
    expect(await refused('tracker1')).toBe(refusals);
  });
});
