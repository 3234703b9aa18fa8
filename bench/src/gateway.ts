import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { Agent, type ClientRequest, request } from 'node:http';
import { join } from 'node:path';
import { type DsmClient, decodePublicId, newFileId } from '@dsm/client';
import type { PrivateNginx } from './nginx.ts';
import { type CpuTimes, cpuSplitOf } from './proc.ts';
import { RssSampler, readRss } from './rss.ts';
import type { BenchOptions, Detail } from './run.ts';
import { cpuText, curlRate, perGiB, sizeLabel, type Timed, timed } from './run.ts';
import { GiB, MiB, patternBlock, patternChunks, patternSource } from './source.ts';
import { median, type Row } from './table.ts';

/** Concurrency of the small-request comparison (the figure, independent of --concurrency). */
export const GATEWAY_CONCURRENCY = 64;
/** Concurrent streams of the gateway's memory check. */
export const GATEWAY_STREAMS = 50;

export interface GatewayCtx {
  /** The HTTP gateway (a `dsm gateway` process of the cluster). */
  port: number;
  pid: number;
  storagePid: number;
  client: DsmClient;
  addr: { host: string; port: number };
  nginxPort: number;
  nginx: PrivateNginx;
  /** nginx's root. */
  www: string;
  details: Detail[];
}

const APP_ID = 'tnvideo';
const USER = 'tnv001'; // the gateway's identity for uploads without a token (auth mode none)

/** Installs wrk with apt-get when missing (like ensureNginx); null when that is not possible. */
export function ensureWrk(log: (msg: string) => void = () => {}): string | null {
  const find = () =>
    [...(process.env.PATH ?? '').split(':'), '/usr/bin', '/usr/local/bin']
      .map((d) => join(d, 'wrk'))
      .find((p) => existsSync(p)) ?? null;
  const found = find();
  if (found) return found;
  log('wrk not found: installing it with apt-get');
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  for (const step of [['install', '-y', 'wrk'], ['update'], ['install', '-y', 'wrk']]) {
    try {
      execFileSync('apt-get', step, { stdio: 'ignore', env });
      if (find()) break;
    } catch {
      // next step
    }
  }
  return find();
}

interface GetResult {
  status: number;
  bytes: number;
}

/** GET, counting and dropping the body; rejects unless the status is `expect`. */
function get(
  agent: Agent | false,
  port: number,
  path: string,
  expect: number,
  headers: Record<string, string> = {},
): Promise<GetResult> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, agent, headers }, (res) => {
      if (res.statusCode !== expect) {
        res.resume();
        reject(new Error(`GET ${path}: HTTP ${res.statusCode}, expected ${expect}`));
        return;
      }
      let n = 0;
      res.on('data', (c: Buffer) => {
        n += c.length;
      });
      res.on('end', () => resolve({ status: res.statusCode as number, bytes: n }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

/** POSTs `size` pattern bytes (Content-Length known) to the gateway; the reply's JSON. */
function post(agent: Agent, port: number, size: number): Promise<{ id: string; size: number }> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port,
        path: '/files',
        method: 'POST',
        agent,
        headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) },
      },
      (res) => {
        const parts: Buffer[] = [];
        res.on('data', (c: Buffer) => parts.push(c));
        res.on('end', () => {
          const text = Buffer.concat(parts).toString();
          if (res.statusCode !== 201) reject(new Error(`POST /files: HTTP ${res.statusCode}: ${text}`));
          else resolve(JSON.parse(text) as { id: string; size: number });
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    void (async () => {
      for (const chunk of patternChunks(size)) {
        if (!req.write(chunk)) await new Promise((r) => req.once('drain', r));
      }
      req.end();
    })();
  });
}

/** Writes `size` pattern bytes to a file (nginx's copy of what the gateway serves). */
async function writePattern(path: string, size: number): Promise<void> {
  const fh = await open(path, 'w');
  try {
    for (const chunk of patternChunks(size)) {
      let off = 0;
      while (off < chunk.length) off += (await fh.write(chunk, off, chunk.length - off)).bytesWritten;
    }
  } finally {
    await fh.close();
  }
}

interface WrkResult {
  rps: number;
  requests: number;
  errors: string;
  p50: string;
  p99: string;
}

/** One wrk run: `connections` connections on one thread, rotating over `paths`. */
function runWrk(
  bin: string,
  port: number,
  paths: string[],
  connections: number,
  seconds: number,
  script: string,
): Promise<WrkResult> {
  writeFileSync(
    script,
    `local paths = {${paths.map((p) => JSON.stringify(p)).join(', ')}}
local i = 0
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
`,
  );
  return new Promise((resolve, reject) => {
    const child = spawn(
      bin,
      ['-t1', `-c${connections}`, `-d${seconds}s`, '--latency', '-s', script, `http://127.0.0.1:${port}`],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString();
    });
    child.stderr.on('data', (c: Buffer) => {
      out += c.toString();
    });
    child.on('error', reject);
    child.on('exit', (code) => {
      const rps = /Requests\/sec:\s+([\d.]+)/.exec(out);
      const total = /(\d+) requests in/.exec(out);
      if (code !== 0 || !rps || !total) {
        reject(new Error(`wrk failed (exit ${code}): ${out.trim()}`));
        return;
      }
      const errs = [/Socket errors:[^\n]*/.exec(out)?.[0], /Non-2xx or 3xx responses: \d+/.exec(out)?.[0]]
        .filter(Boolean)
        .join('; ');
      resolve({
        rps: Number(rps[1]),
        requests: Number(total[1]),
        errors: errs,
        p50: /^\s+50%\s+(\S+)/m.exec(out)?.[1] ?? '?',
        p99: /^\s+99%\s+(\S+)/m.exec(out)?.[1] ?? '?',
      });
    });
  });
}

/** The same loop without wrk: Node's http client, keep-alive, `connections` at once. */
async function nodeLoop(
  port: number,
  paths: string[],
  connections: number,
  ms: number,
  size: number,
): Promise<WrkResult> {
  const agent = new Agent({ keepAlive: true, maxSockets: connections });
  let next = 0;
  let done = 0;
  const t0 = performance.now();
  const deadline = t0 + ms;
  const worker = async () => {
    while (performance.now() < deadline) {
      const r = await get(agent, port, paths[next++ % paths.length] as string, 200);
      if (r.bytes !== size) throw new Error(`got ${r.bytes} of ${size} bytes`);
      done++;
    }
  };
  await Promise.all(Array.from({ length: connections }, worker));
  agent.destroy();
  return { rps: done / ((performance.now() - t0) / 1000), requests: done, errors: '', p50: '?', p99: '?' };
}

/**
 * `n` concurrent downloads of one big file, each read as fast as it comes, for `ms`; then all
 * are dropped. Peak RSS of `pids` while they run, bytes received, and how many were answered.
 */
async function concurrentStreams(
  port: number,
  path: string,
  n: number,
  ms: number,
  pids: () => number[],
): Promise<{ peakRss: number; bytes: number; answered: number; failed: string[]; ms: number }> {
  const reqs: ClientRequest[] = [];
  let bytes = 0;
  let answered = 0;
  const failed: string[] = [];
  const sampler = new RssSampler(pids(), 50);
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    const req = request({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      if (res.statusCode === 200) answered++;
      else failed.push(`HTTP ${res.statusCode}`);
      res.on('data', (c: Buffer) => {
        bytes += c.length;
      });
      res.on('error', () => {});
    });
    req.on('error', (e) => {
      if (performance.now() - t0 < ms) failed.push(e.message);
    });
    req.end();
    reqs.push(req);
  }
  await new Promise((r) => setTimeout(r, ms));
  const elapsed = performance.now() - t0;
  const { peak } = sampler.stop();
  for (const r of reqs) r.destroy();
  await new Promise((r) => setTimeout(r, 500));
  return { peakRss: peak, bytes, answered, failed, ms: elapsed };
}

/** The gateway beside nginx, serving the same bytes in the same run. */
export async function gatewayBench(o: BenchOptions, c: GatewayCtx): Promise<Row[]> {
  const { log } = o;
  const size = o.largeSize;
  const label = sizeLabel(size);
  const rangeSize = o.mediumSize;
  const servers = [c.pid, c.storagePid];
  const agent = new Agent({ keepAlive: true, maxSockets: GATEWAY_CONCURRENCY });
  const rows: Row[] = [];
  const show = (xs: number[]) => xs.map((x) => x.toFixed(0)).join(', ');
  const rate = (bytes: number, ts: Timed[]) => ts.map((t) => bytes / MiB / (t.ms / 1000));
  const med = (ts: Timed[]) =>
    (ts[ts.map((t) => t.ms).indexOf(median(ts.map((t) => t.ms)))] ?? ts[0]) as Timed;
  try {
    const idleRss = readRss(c.pid) ?? 0;

    // upload: through the gateway (POST /files, one streamed frame to the storage) vs. the same
    // upload straight to the storage with the client library
    const gwUp: Timed[] = [];
    const directUp: Timed[] = [];
    let fileId = '';
    for (let r = 0; r < o.reps; r++) {
      log(`gateway: upload ${label} #${r + 1}: gateway`);
      let reply = { id: '', size: 0 };
      gwUp.push(
        await timed(servers, async () => {
          reply = await post(agent, c.port, size);
        }),
      );
      if (reply.size !== size) throw new Error(`gateway upload stored ${reply.size} of ${size} bytes`);
      if (!fileId) fileId = reply.id;
      else await c.client.delete(decodePublicId(reply.id));
      log(`gateway: upload ${label} #${r + 1}: storage direct`);
      const ids = { appId: APP_ID, userId: USER, fileId: newFileId() };
      directUp.push(
        await timed([c.storagePid], async () => {
          const st = await c.client.storage.uploadExt(c.addr, ids, '', patternSource(size));
          if (st.size !== size) throw new Error(`direct upload stored ${st.size} of ${size} bytes`);
        }),
      );
      await c.client.storage.delete(c.addr, ids);
    }
    rows.push({
      name: `gateway upload ${label} (MiB/s)`,
      unit: 'MiB/s',
      dsm: median(rate(size, gwUp)),
      base: median(rate(size, directUp)),
      baseLabel: 'storage direct',
      target: { kind: 'none' },
      dsmRuns: rate(size, gwUp),
      baseRuns: rate(size, directUp),
    });
    c.details.push({
      name: `gateway upload ${label}`,
      text:
        `runs MiB/s gateway [${show(rate(size, gwUp))}] storage direct [${show(rate(size, directUp))}]; ` +
        `median run: ${perGiB(med(gwUp), size, 'gateway+storage')}; direct: ${perGiB(med(directUp), size, 'storage')}`,
    });

    // the same bytes for nginx
    const ngxName = `gw-${size}.bin`;
    log(`gateway: writing nginx's copy (${label})`);
    await writePattern(join(c.www, ngxName), size);
    const gwPath = `/files/${fileId}`;
    const ngxPath = `/${ngxName}`;
    // warm-up (page cache, JIT, connections)
    await get(agent, c.port, gwPath, 200);
    await get(agent, c.nginxPort, ngxPath, 200);

    // whole-file downloads
    const gwDown: Timed[] = [];
    const ngxDown: Timed[] = [];
    const gwAlone: CpuTimes = { user: 0, sys: 0 };
    for (let r = 0; r < o.reps; r++) {
      log(`gateway: download ${label} #${r + 1}: gateway`);
      const g0 = cpuSplitOf([c.pid]);
      gwDown.push(
        await timed(servers, async () => {
          const g = await get(agent, c.port, gwPath, 200);
          if (g.bytes !== size) throw new Error(`gateway download returned ${g.bytes} of ${size} bytes`);
        }),
      );
      const g1 = cpuSplitOf([c.pid]);
      gwAlone.user += g1.user - g0.user;
      gwAlone.sys += g1.sys - g0.sys;
      log(`gateway: download ${label} #${r + 1}: nginx`);
      ngxDown.push(
        await timed(c.nginx.workerPids(), async () => {
          const g = await get(agent, c.nginxPort, ngxPath, 200);
          if (g.bytes !== size) throw new Error(`nginx download returned ${g.bytes} of ${size} bytes`);
        }),
      );
    }
    const curlGw: number[] = [];
    const curlNgx: number[] = [];
    for (let r = 0; r < o.reps; r++) {
      const a = curlRate(`http://127.0.0.1:${c.port}${gwPath}`, size);
      const b = curlRate(`http://127.0.0.1:${c.nginxPort}${ngxPath}`, size);
      if (a === null || b === null) break;
      curlGw.push(a);
      curlNgx.push(b);
    }
    rows.push({
      name: `gateway download ${label} (MiB/s)`,
      unit: 'MiB/s',
      dsm: median(rate(size, gwDown)),
      base: median(rate(size, ngxDown)),
      baseLabel: 'nginx',
      target: { kind: 'ratio', min: 0.7 },
      dsmRuns: rate(size, gwDown),
      baseRuns: rate(size, ngxDown),
    });
    c.details.push({
      name: `gateway download ${label}`,
      text:
        `runs MiB/s gateway [${show(rate(size, gwDown))}] nginx [${show(rate(size, ngxDown))}] (Node http client); ` +
        `median run: ${perGiB(med(gwDown), size, 'gateway+storage')}; nginx ${perGiB(med(ngxDown), size, 'nginx')}; ` +
        `the gateway process alone ${cpuText(gwAlone, GiB / size / o.reps, 's', 2)} CPU/GiB` +
        (curlGw.length ? `; to curl: gateway [${show(curlGw)}] nginx [${show(curlNgx)}] MiB/s` : ''),
    });

    // one range in the middle of the file (206), as a player's seek or a CDN's slice
    const from = Math.floor(size / 2) - Math.floor(rangeSize / 2) + 12_345;
    const range = { Range: `bytes=${from}-${from + rangeSize - 1}` };
    const rangeLabel = sizeLabel(rangeSize);
    const gwRange: Timed[] = [];
    const ngxRange: Timed[] = [];
    const rangeReps = Math.max(3, 2 * o.reps + 1);
    log(`gateway: ${rangeReps} × range ${rangeLabel} from each`);
    for (let r = 0; r < rangeReps; r++) {
      gwRange.push(
        await timed(servers, async () => {
          const g = await get(agent, c.port, gwPath, 206, range);
          if (g.bytes !== rangeSize) throw new Error(`gateway range returned ${g.bytes} bytes`);
        }),
      );
      ngxRange.push(
        await timed(c.nginx.workerPids(), async () => {
          const g = await get(agent, c.nginxPort, ngxPath, 206, range);
          if (g.bytes !== rangeSize) throw new Error(`nginx range returned ${g.bytes} bytes`);
        }),
      );
    }
    rows.push({
      name: `gateway range ${rangeLabel} of ${label} (MiB/s)`,
      unit: 'MiB/s',
      dsm: median(rate(rangeSize, gwRange)),
      base: median(rate(rangeSize, ngxRange)),
      baseLabel: 'nginx',
      target: { kind: 'ratio', min: 0.7 },
      dsmRuns: rate(rangeSize, gwRange),
      baseRuns: rate(rangeSize, ngxRange),
    });
    c.details.push({
      name: `gateway range ${rangeLabel}`,
      text:
        `runs MiB/s gateway [${show(rate(rangeSize, gwRange))}] nginx [${show(rate(rangeSize, ngxRange))}]; ` +
        `includes the request's round trip (stat cached for statCacheMs, then one storage download)`,
    });

    // 4 KiB GETs at concurrency 64
    rows.push(...(await smallGets(o, c)));

    // memory: 50 concurrent 1 GiB streams, bounded in time
    const streamMs = o.loopMs * 2;
    log(`gateway: ${GATEWAY_STREAMS} concurrent ${label} streams for ${streamMs} ms: gateway`);
    const gwStreams = await concurrentStreams(c.port, gwPath, GATEWAY_STREAMS, streamMs, () => [c.pid]);
    log(`gateway: ${GATEWAY_STREAMS} concurrent ${label} streams for ${streamMs} ms: nginx`);
    const ngxStreams = await concurrentStreams(c.nginxPort, ngxPath, GATEWAY_STREAMS, streamMs, () =>
      c.nginx.workerPids(),
    );
    const streamText = (s: typeof gwStreams) =>
      `${s.answered}/${GATEWAY_STREAMS} answered 200, ${(s.bytes / MiB / (s.ms / 1000)).toFixed(0)} MiB/s in all` +
      (s.failed.length ? `, failures: ${[...new Set(s.failed)].join(', ')}` : '');
    rows.push({
      name: `gateway RSS peak, ${GATEWAY_STREAMS} × ${label} streams (MiB)`,
      unit: 'MiB',
      dsm: gwStreams.answered === GATEWAY_STREAMS ? gwStreams.peakRss / MiB : null,
      base: ngxStreams.peakRss / MiB,
      baseLabel: 'nginx worker',
      target: { kind: 'max', value: 200 },
      note: streamText(gwStreams),
    });
    c.details.push({
      name: `gateway ${GATEWAY_STREAMS} streams`,
      text:
        `${streamMs} ms each: gateway ${streamText(gwStreams)}; nginx ${streamText(ngxStreams)}; ` +
        `gateway RSS idle ${(idleRss / MiB).toFixed(0)} MiB`,
    });
    rows.push({
      name: 'gateway RSS idle, after start (MiB)',
      unit: 'MiB',
      dsm: idleRss / MiB,
      base: null,
      baseLabel: '',
      target: { kind: 'none' },
    });
    return rows;
  } finally {
    agent.destroy();
  }
}

/** 4 KiB GETs at concurrency 64 with wrk (or Node's client without wrk): gateway vs. nginx. */
async function smallGets(o: BenchOptions, c: GatewayCtx): Promise<Row[]> {
  const { log } = o;
  const size = o.smallSize;
  const label = sizeLabel(size);
  const FILES = 64;
  const payload = patternBlock().subarray(0, size);
  const dir = join(c.www, 'gw-small');
  mkdirSync(dir, { recursive: true });
  const agent = new Agent({ keepAlive: true, maxSockets: 8 });
  const gwPaths: string[] = [];
  try {
    for (let i = 0; i < FILES; i++) {
      writeFileSync(join(dir, `${i}.bin`), payload);
      const r = await new Promise<{ id: string }>((resolve, reject) => {
        const req = request(
          {
            host: '127.0.0.1',
            port: c.port,
            path: '/files',
            method: 'POST',
            agent,
            headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) },
          },
          (res) => {
            const parts: Buffer[] = [];
            res.on('data', (b: Buffer) => parts.push(b));
            res.on('end', () =>
              res.statusCode === 201
                ? resolve(JSON.parse(Buffer.concat(parts).toString()))
                : reject(new Error(`POST /files: HTTP ${res.statusCode}`)),
            );
          },
        );
        req.on('error', reject);
        req.end(payload);
      });
      gwPaths.push(`/files/${r.id}`);
    }
  } finally {
    agent.destroy();
  }
  const ngxPaths = Array.from({ length: FILES }, (_, i) => `/gw-small/${i}.bin`);
  const wrk = ensureWrk(log);
  const tool = wrk ? 'wrk -t1' : 'Node http loop (no wrk)';
  const seconds = Math.max(1, Math.round(o.loopMs / 1000));
  const script = join(c.www, '..', 'wrk-paths.lua');
  const once = (port: number, paths: string[], secs: number) =>
    wrk
      ? runWrk(wrk, port, paths, GATEWAY_CONCURRENCY, secs, script)
      : nodeLoop(port, paths, GATEWAY_CONCURRENCY, secs * 1000, size);
  /** Warm-up, then `loopReps` timed runs; CPU of each process group in `groups`. */
  const measure = async (name: string, port: number, paths: string[], groups: () => number[][]) => {
    await once(port, paths, 1); // warm-up
    const runs: WrkResult[] = [];
    const cpu: CpuTimes[] = groups().map(() => ({ user: 0, sys: 0 }));
    for (let r = 0; r < o.loopReps; r++) {
      log(
        `gateway: ${label} GETs, ${name} #${r + 1} (${seconds} s, ${GATEWAY_CONCURRENCY} connections, ${tool})`,
      );
      const g = groups();
      const c0 = g.map(cpuSplitOf);
      runs.push(await once(port, paths, seconds));
      const c1 = g.map(cpuSplitOf);
      g.forEach((_, i) => {
        const acc = cpu[i] as CpuTimes;
        acc.user += (c1[i] as CpuTimes).user - (c0[i] as CpuTimes).user;
        acc.sys += (c1[i] as CpuTimes).sys - (c0[i] as CpuTimes).sys;
      });
    }
    const requests = runs.reduce((a, r) => a + r.requests, 0);
    return { runs, rate: runs.reduce((a, r) => a + r.rps, 0) / runs.length, cpu, requests };
  };
  const gw = await measure('gateway', c.port, gwPaths, () => [[c.pid], [c.storagePid]]);
  const ngx = await measure('nginx', c.nginxPort, ngxPaths, () => [c.nginx.workerPids()]);
  const errors = [...gw.runs, ...ngx.runs].map((r) => r.errors).filter(Boolean);
  const perReq = (m: typeof gw, i = 0) =>
    cpuText(m.cpu[i] as CpuTimes, 1e6 / Math.max(1, m.requests), 'µs', 0);
  const show = (xs: number[]) => xs.map((x) => x.toFixed(0)).join(', ');
  c.details.push({
    name: `gateway ${label} GETs`,
    text:
      `${tool}, ${GATEWAY_CONCURRENCY} connections: runs/s gateway [${show(gw.runs.map((r) => r.rps))}] ` +
      `nginx [${show(ngx.runs.map((r) => r.rps))}]; latency p50/p99 gateway ${gw.runs[0]?.p50}/${gw.runs[0]?.p99}, ` +
      `nginx ${ngx.runs[0]?.p50}/${ngx.runs[0]?.p99}; CPU per request: gateway ${perReq(gw, 0)}, ` +
      `storage ${perReq(gw, 1)}, nginx ${perReq(ngx)}` +
      (errors.length ? `; ERRORS: ${errors.join(' | ')}` : ''),
  });
  const all = gw.runs;
  return [
    {
      name: `gateway ${label} GETs/s, concurrency ${GATEWAY_CONCURRENCY}`,
      unit: '/s',
      dsm: errors.length ? null : all.reduce((a, r) => a + r.rps, 0) / all.length,
      base: ngx.rate,
      baseLabel: 'nginx',
      target: { kind: 'ratio', min: 0.5 },
      dsmRuns: all.map((r) => r.rps),
      baseRuns: ngx.runs.map((r) => r.rps),
    },
  ];
}
