import { request } from 'node:http';
import type { NodeHandle } from '@dsm/cluster';
import { BACKEND_NAMES, patternBytes, startTestCluster, type TestCluster } from '@dsm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

// The multi-process gateway (`workers: 2`, cluster.ts) as `dsm gateway` runs it, behind the
// launcher of `dsm up`, on both backends: Redis, and the embedded in-process cache the primary
// holds for its workers. `DSM_GATEWAY_WORKER_HEADER=1` makes every reply say which worker
// (pid) answered; each request below opens its own connection, so the primary hands them out
// in turn.

const KiB = 1024;
const MiB = 1024 * KiB;
const TUS = { 'Tus-Resumable': '1.0.0' };

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  pid: number;
}

/** One request on a fresh connection (no agent: the connection closes after it). */
function send(
  url: string,
  method: string,
  headers: Record<string, string> = {},
  body?: Buffer,
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method, headers, agent: false, timeout: 20_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body: Buffer.concat(chunks),
          pid: Number(res.headers['x-dsm-worker']),
        }),
      );
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${url}: no answer in 20 s`)));
    req.on('error', reject);
    req.end(body);
  });
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

async function killWorker(pid: number): Promise<void> {
  process.kill(pid, 'SIGKILL');
  const until = Date.now() + 10_000;
  while (alive(pid)) {
    if (Date.now() > until) throw new Error(`worker ${pid} still alive 10 s after SIGKILL`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Sum of the samples of `name` whose labels match every `labels` pair. */
function sample(metrics: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of metrics.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-z_]+)(\{[^}]*\})?\s+(\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const l = m[2] ?? '';
    if (Object.entries(labels).every(([k, v]) => l.includes(`${k}="${v}"`))) sum += Number(m[3]);
  }
  return sum;
}

describe.each(BACKEND_NAMES)('multi-process gateway (2 workers) on %s', (backend) => {
  let t: TestCluster;
  let gw: NodeHandle;
  let base: string;
  let admin: string;
  let fileId = '';
  const data = patternBytes(3 * MiB + 4321, 12);

  beforeAll(async () => {
    t = await startTestCluster(backend, {
      trackers: 1,
      groups: ['group001'],
      storagesPerGroup: 2,
      gateways: 1,
      gatewayWorkers: 2,
      env: { DSM_LOG_LEVEL: process.env.DSM_LOG_LEVEL ?? 'warn', DSM_GATEWAY_WORKER_HEADER: '1' },
      extra: { gateway: { admin: { listen: '127.0.0.1:0' }, statCacheMs: 0, locateCacheMs: 0 } },
    });
    await t.waitActive(2, 20_000);
    gw = t.cluster.nodes.get('gateway1') as NodeHandle;
    base = String(gw.ready.url);
    admin = String(gw.ready.adminUrl);
  }, 90_000);

  /** Waits until the admin listener's /readyz lists `n` ready workers. */
  async function waitWorkers(n: number): Promise<number[]> {
    const until = Date.now() + 20_000;
    for (;;) {
      const r = await fetch(`${admin}/readyz`);
      const body = (await r.json()) as { workers?: { pid: number; ready: boolean }[] };
      const ready = (body.workers ?? []).filter((w) => w.ready).map((w) => w.pid);
      if (ready.length === n) return ready;
      if (Date.now() > until)
        throw new Error(`/readyz lists ${ready.length} ready workers, not ${n}, after 20 s`);
      await new Promise((res) => setTimeout(res, 100));
    }
  }

  afterAll(async () => {
    await t?.stop();
  });

  it('runs two worker processes on the one port and hands new connections to both in turn', async () => {
    const workers = gw.ready.workers as number[];
    expect(workers).toHaveLength(2);
    expect(workers).not.toContain(gw.pid);
    const seen: number[] = [];
    for (let i = 0; i < 6; i++) {
      const r = await send(`${base}/healthz`, 'GET');
      expect(r.status).toBe(200);
      seen.push(r.pid);
    }
    expect(new Set(seen)).toEqual(new Set(workers));
  });

  it('a tus upload created on one worker takes PATCHes on the other, and after that worker is SIGKILLed, on a different process', async () => {
    const created = await send(`${base}/tus/`, 'POST', { ...TUS, 'Upload-Length': String(data.length) });
    expect(created.status).toBe(201);
    const location = String(created.headers.location);
    const url = location.startsWith('http') ? location : `${base}${location}`;
    const patch = (from: number, to: number) =>
      send(
        url,
        'PATCH',
        { ...TUS, 'Upload-Offset': String(from), 'Content-Type': 'application/offset+octet-stream' },
        data.subarray(from, to),
      );
    // 1st chunk: the other worker than the creation's (connections go to the workers in turn)
    const p1 = await patch(0, MiB);
    expect(p1.status).toBe(204);
    expect(p1.pid).not.toBe(created.pid);
    expect(Number(p1.headers['upload-offset'])).toBe(MiB);

    // the worker that took the 1st chunk dies: what it knew of the upload dies with it
    await killWorker(p1.pid);
    const head = await send(url, 'HEAD', TUS);
    expect(head.status).toBe(200);
    expect(head.pid).not.toBe(p1.pid);
    expect(Number(head.headers['upload-offset'])).toBe(MiB);
    const p2 = await patch(MiB, 2 * MiB);
    expect(p2.status).toBe(204);
    expect(p2.pid).not.toBe(p1.pid);
    const p3 = await patch(2 * MiB, data.length);
    expect(p3.status).toBe(204);
    fileId = String(p3.headers['dsm-file-id']);
    expect(fileId).not.toBe('undefined');

    const got = await send(`${base}/files/${fileId}`, 'GET');
    expect(got.status).toBe(200);
    expect(got.body.equals(data)).toBe(true);
  }, 60_000);

  it('keeps serving while a worker is SIGKILLed; the primary starts a new one, counted in /metrics and /readyz', async () => {
    expect(fileId).not.toBe('');
    // the worker the tus test killed has been replaced: two workers again
    await waitWorkers(2);
    const before = new Set<number>();
    for (let i = 0; i < 4; i++) before.add((await send(`${base}/healthz`, 'GET')).pid);
    expect(before.size).toBe(2);
    const victim = [...before][0] as number;
    await killWorker(victim);
    // every request after the kill succeeds, on the survivor or a new worker
    for (let i = 0; i < 10; i++) {
      const r = await send(`${base}/files/${fileId}`, 'GET');
      expect(r.status).toBe(200);
      expect(r.pid).not.toBe(victim);
      expect(r.body.equals(data)).toBe(true);
    }
    // the primary forks a replacement (restart backoff starts at 100 ms)
    let fresh = 0;
    const until = Date.now() + 20_000;
    while (!fresh) {
      if (Date.now() > until) throw new Error('no new worker answered within 20 s of the kill');
      const r = await send(`${base}/healthz`, 'GET');
      if (r.status === 200 && !before.has(r.pid)) fresh = r.pid;
      else await new Promise((res) => setTimeout(res, 100));
    }
    const ready = await fetch(`${admin}/readyz`);
    expect(ready.status).toBe(200);
    const body = (await ready.json()) as { workers: { pid: number; ready: boolean }[] };
    expect(body.workers.map((w) => w.pid).sort()).toEqual(
      [fresh, ...[...before].filter((p) => p !== victim)].sort(),
    );
    expect(body.workers.every((w) => w.ready)).toBe(true);
    const metrics = await (await fetch(`${admin}/metrics`)).text();
    // two kills in this file: the one of the tus test and this one
    expect(sample(metrics, 'dsm_gateway_worker_restarts_total')).toBe(2);
    expect(sample(metrics, 'dsm_gateway_workers')).toBe(2);
  }, 60_000);

  it("/metrics on the admin listener sums the workers' counters", async () => {
    const count = async () =>
      sample(await (await fetch(`${admin}/metrics`)).text(), 'dsm_gateway_requests_total', {
        method: 'GET',
        status: '206',
      });
    const start = await count();
    const pids = new Set<number>();
    for (let i = 0; i < 6; i++) {
      const r = await send(`${base}/files/${fileId}`, 'GET', { Range: 'bytes=0-99' });
      expect(r.status).toBe(206);
      expect(r.body.equals(data.subarray(0, 100))).toBe(true);
      pids.add(r.pid);
    }
    expect(pids.size).toBe(2);
    expect((await count()) - start).toBe(6);
  });

  it('SIGTERM to the primary drains: a download in flight completes, then the primary and its workers exit 0', async () => {
    const node = t.cluster.nodes.get('gateway1') as NodeHandle & { exited: Promise<number | null> };
    const workers = await waitWorkers(2);
    // bigger than the socket buffers of both ends: the reply cannot be all sent when SIGTERM comes
    const big = patternBytes(32 * MiB, 13);
    const posted = await send(`${base}/files`, 'POST', { 'Content-Type': 'application/octet-stream' }, big);
    expect(posted.status).toBe(201);
    const bigId = (JSON.parse(posted.body.toString()) as { id: string }).id;
    const body = await new Promise<Buffer>((resolve, reject) => {
      const req = request(`${base}/files/${bigId}`, { agent: false }, (res) => {
        expect(res.statusCode).toBe(200);
        res.pause();
        // the reply has started; the primary is told to stop while it is still being read
        process.kill(node.pid as number, 'SIGTERM');
        setTimeout(() => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve(Buffer.concat(chunks)));
          res.on('error', reject);
          res.resume();
        }, 300);
      });
      req.on('error', reject);
      req.end();
    });
    expect(body.equals(big)).toBe(true);
    expect(await node.exited).toBe(0);
    for (const pid of workers) expect(alive(pid)).toBe(false);
    await expect(send(`${base}/healthz`, 'GET')).rejects.toThrow(/ECONNREFUSED/);
  }, 30_000);
});
