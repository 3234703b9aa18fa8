import { mkdirSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { Agent, request } from 'node:http';
import { join } from 'node:path';
import { type DsmClient, decodePublicId, newFileId } from '@dsm/client';
import { curlFirstBytes, curlRate, ensureTool, runWrk, type WrkResult } from './clients.ts';
import type { PrivateNginx } from './nginx.ts';
import { type CpuTimes, cpuSplitOf, settleWriteback } from './proc.ts';
import { ReferenceServer } from './refs.ts';
import { RssSampler, readRss } from './rss.ts';
import type { BenchOptions, Detail } from './run.ts';
import { cpuText, perGiB, sizeLabel, type Timed, timed } from './run.ts';
import { GiB, MiB, patternBlock, patternChunks, patternSource } from './source.ts';
import { type Latency, latencyOf, median, type Reference, type Row, type Target } from './table.ts';

/** Connections of the small-GET comparison (the issue's `wrk -t1 -c64`, independent of --concurrency). */
export const GATEWAY_CONCURRENCY = 64;
/** Connections of the small-POST loop (the issue's figure). */
export const POST_CONCURRENCY = 16;
/** Concurrent streams of the gateway's memory check. */
export const GATEWAY_STREAMS = 50;
/** The range storm: this many concurrent requests for one range of this size. */
export const STORM_REQUESTS = 100;
export const STORM_RANGE = 4 * MiB;
/** Size of the ranges whose first byte is timed. */
export const SEEK_RANGE = MiB;

/**
 * The gateway's small-file cache (`fileCache`) off and on, as config overrides; "on" is the
 * default of gateway/src/config.ts spelled out. A gateway that refuses the key (a tree without
 * the cache) makes the rows say so.
 */
export const SMALL_FILE_CACHE = {
  off: { fileCache: { maxBytes: 0 } },
  on: { fileCache: { maxBytes: 64 * MiB, maxFileBytes: 256 * 1024 } },
} as const;

export interface GatewayCtx {
  /** The HTTP gateway's port (the same across restarts). */
  port: number;
  /** Its admin listener (`admin.listen`: /metrics). */
  adminPort: number;
  /** PIDs of the gateway: its process and every process under it (node:cluster workers). */
  pids(): number[];
  /**
   * Restarts the gateway with these keys over the bench's base config; resolves with null when
   * it came up, else with why not (and then it runs the base config again).
   */
  reconfigure(overrides: Record<string, unknown>): Promise<string | null>;
  storagePid: number;
  client: DsmClient;
  addr: { host: string; port: number };
  nginxPort: number;
  nginx: PrivateNginx;
  /** nginx's root. */
  www: string;
  /** Scratch folder (wrk scripts). */
  scratch: string;
  details: Detail[];
  references: Reference[];
}

const APP_ID = 'tnvideo';
const USER = 'tnv001'; // the gateway's identity for uploads without a token (auth mode none)

/** GET of a text body (bounded to 4 MiB). */
function getText(port: number, path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, agent: false, timeout: 10_000 }, (res) => {
      const parts: Buffer[] = [];
      let n = 0;
      res.on('data', (c: Buffer) => {
        n += c.length;
        if (n > 4 * MiB) req.destroy(new Error(`${path}: more than 4 MiB`));
        else parts.push(c);
      });
      res.on('end', () =>
        res.statusCode === 200
          ? resolve(Buffer.concat(parts).toString())
          : reject(new Error(`GET ${path}: HTTP ${res.statusCode}`)),
      );
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${path}: no answer within 10 s`)));
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
    // on disk before the timed GETs: left dirty, the kernel would write it back during them
    await fh.sync();
  } finally {
    await fh.close();
  }
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
  const reqs: ReturnType<typeof request>[] = [];
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

/**
 * The counter of storage slice reads on the gateway's /metrics (issue 12, range coalescing):
 * the sum of every sample of the first counter whose name has `slice` and `read` in it, or
 * null when the gateway has none.
 */
export function sliceReadsOf(metrics: string): { name: string; value: number } | null {
  const names = new Map<string, number>();
  for (const line of metrics.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+([0-9.eE+-]+)/.exec(line);
    if (!m) continue;
    const name = m[1] as string;
    if (!/slice/i.test(name) || !/read|fetch|upstream/i.test(name) || /_bucket$|_sum$|_count$/.test(name))
      continue;
    names.set(name, (names.get(name) ?? 0) + Number(m[3]));
  }
  const [first] = [...names.entries()].sort(([a], [b]) => Number(/read/.test(b)) - Number(/read/.test(a)));
  return first ? { name: first[0], value: first[1] } : null;
}

/** A deterministic generator (xorshift32) for the seek offsets, the same in every run. */
function offsets(n: number, size: number, range: number): Array<[number, number]> {
  let x = 0x2545f491;
  const out: Array<[number, number]> = [];
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    const from = (x >>> 0) % (size - range);
    out.push([from, from + range - 1]);
  }
  return out;
}

const cpuPerGiB = (t: Timed, bytes: number) => (((t.server.user + t.server.sys) * GiB) / bytes).toFixed(2);
const show = (xs: number[]) => xs.map((x) => x.toFixed(0)).join(', ');
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
const cpuDiff = (a: CpuTimes, b: CpuTimes): CpuTimes => ({ user: b.user - a.user, sys: b.sys - a.sys });
const addCpu = (acc: CpuTimes, d: CpuTimes) => {
  acc.user += d.user;
  acc.sys += d.sys;
};

/** The gateway beside nginx and the bare Node references, serving the same bytes in the same run. */
export async function gatewayBench(o: BenchOptions, c: GatewayCtx): Promise<Row[]> {
  const { log } = o;
  const curl = ensureTool('curl', 'curl', log);
  const wrk = ensureTool('wrk', 'wrk', log);
  const proxy = await ReferenceServer.start('http-proxy', c.nginxPort);
  const pipe = await ReferenceServer.start('tcp-pipe', c.nginxPort);
  log(
    `references: Node http proxy :${proxy.port} (pid ${proxy.pid}), TCP pipe :${pipe.port} (pid ${pipe.pid})`,
  );
  // a new connection per big upload: a kept-alive one may have been closed by the gateway's
  // idle timeout (timeouts.keepAliveMs) while the storage-protocol upload ran
  const agent = new Agent({ keepAlive: false });
  const idleRss = c.pids().reduce((s, p) => s + (readRss(p) ?? 0), 0);
  /** A step that fails gives a row saying so, and the bench goes on with the next. */
  const guard = async (name: string, target: Target, fn: () => Promise<Row | Row[]>): Promise<Row[]> => {
    try {
      const r = await fn();
      return Array.isArray(r) ? r : [r];
    } catch (e) {
      const msg = ((e as Error).message ?? String(e)).split('\n')[0] as string;
      log(`${name}: FAILED: ${msg}`);
      c.details.push({ name: `${name} FAILED`, text: (e as Error).stack ?? msg });
      return [
        {
          name,
          unit: '',
          dsm: null,
          base: null,
          baseLabel: '',
          target,
          note: `FAILED: ${msg.slice(0, 300)}`,
        },
      ];
    }
  };
  try {
    const tools = { curl, agent, proxy, pipe };
    const big = await bigBodies(o, c, tools);
    const L = sizeLabel(o.largeSize);
    const rows = [...big.rows];
    rows.push(
      ...(await guard(`gateway GET ${L}`, { kind: 'ratio', min: 0.9 }, () => bigGets(o, c, tools, big.urls))),
    );
    rows.push(...(await guard('gateway range', { kind: 'none' }, () => mediumRange(o, c, tools, big.urls))));
    rows.push(
      ...(await guard('first byte of a range', { kind: 'max', value: 5 }, () =>
        firstByte(o, c, curl, big.gwPath, big.ngxPath),
      )),
    );
    rows.push(...(await guard('range storm', { kind: 'atMost', value: 4 }, () => rangeStorm(o, c))));
    rows.push(
      ...(await guard('gateway streams', { kind: 'max', value: 200 }, () =>
        streams(o, c, big.gwPath, big.ngxPath, idleRss),
      )),
    );
    rows.push(
      ...(await guard(`gateway ${sizeLabel(o.smallSize)} requests`, { kind: 'none' }, () =>
        smallRequests(o, c, { wrk, proxy, pipe }),
      )),
    );
    return rows;
  } finally {
    agent.destroy();
    await proxy.stop();
    await pipe.stop();
  }
}

interface BigTools {
  curl: string;
  agent: Agent;
  proxy: ReferenceServer;
  pipe: ReferenceServer;
}

/** 1 GiB POST vs. the storage protocol; 1 GiB GET (curl) vs. the TCP pipe, nginx, the http proxy. */
async function bigBodies(
  o: BenchOptions,
  c: GatewayCtx,
  t: BigTools,
): Promise<{ rows: Row[]; gwPath: string; ngxPath: string; urls: BigUrls }> {
  const { log } = o;
  const size = o.largeSize;
  const label = sizeLabel(size);
  const rows: Row[] = [];
  const rate = (bytes: number, ts: Timed[]) => ts.map((x) => bytes / MiB / (x.ms / 1000));
  const med = (ts: Timed[]) =>
    (ts[ts.map((x) => x.ms).indexOf(median(ts.map((x) => x.ms)))] ?? ts[0]) as Timed;

  // upload: through the gateway (POST /files) vs. the same bytes straight to the storage with
  // the client library; both clients are Node, so the comparison is of the servers' paths. The
  // same upload through a bare Node TCP pipe in front of the storage shows what one Node
  // process in the path costs on this machine, whatever it does (the gateway is one).
  const gwUp: Timed[] = [];
  const directUp: Timed[] = [];
  const pipeUp: Timed[] = [];
  const storagePipe = await ReferenceServer.start('tcp-pipe', c.addr.port);
  const viaPipe = { host: '127.0.0.1', port: storagePipe.port };
  let fileId = '';
  try {
    // untimed warm-up (as the big uploads of run.ts): the file the GETs below read, and one
    // direct upload removed again, so that every timed run of the three writes into pages freed
    // by the run before it (docs/performance.md, "What is measured")
    log(`gateway: POST ${label}: the file the GETs read (untimed)`);
    const kept = await post(t.agent, c.port, size);
    if (kept.size !== size) throw new Error(`gateway upload stored ${kept.size} of ${size} bytes`);
    fileId = kept.id;
    const warm = { appId: APP_ID, userId: USER, fileId: newFileId() };
    await c.client.storage.uploadExt(c.addr, warm, '', patternSource(size));
    await c.client.storage.delete(c.addr, warm);
    for (let r = 0; r < o.reps; r++) {
      log(`gateway: POST ${label} #${r + 1}: gateway`);
      let reply = { id: '', size: 0 };
      gwUp.push(
        await timed([...c.pids(), c.storagePid], async () => {
          reply = await post(t.agent, c.port, size);
        }),
      );
      if (reply.size !== size) throw new Error(`gateway upload stored ${reply.size} of ${size} bytes`);
      await c.client.delete(decodePublicId(reply.id));
      log(`gateway: upload ${label} #${r + 1}: storage protocol`);
      const ids = { appId: APP_ID, userId: USER, fileId: newFileId() };
      directUp.push(
        await timed([c.storagePid], async () => {
          const st = await c.client.storage.uploadExt(c.addr, ids, '', patternSource(size));
          if (st.size !== size) throw new Error(`direct upload stored ${st.size} of ${size} bytes`);
        }),
      );
      await c.client.storage.delete(c.addr, ids);
      log(`gateway: upload ${label} #${r + 1}: storage protocol through a Node TCP pipe`);
      const pipeIds = { appId: APP_ID, userId: USER, fileId: newFileId() };
      pipeUp.push(
        await timed([storagePipe.pid, c.storagePid], async () => {
          const st = await c.client.storage.uploadExt(viaPipe, pipeIds, '', patternSource(size));
          if (st.size !== size) throw new Error(`upload through the pipe stored ${st.size} of ${size} bytes`);
        }),
      );
      await c.client.storage.delete(c.addr, pipeIds);
    }
  } finally {
    await storagePipe.stop();
  }
  rows.push(
    {
      name: `gateway POST /files ${label} (MiB/s)`,
      unit: 'MiB/s',
      dsm: median(rate(size, gwUp)),
      base: median(rate(size, directUp)),
      baseLabel: 'storage protocol upload',
      target: { kind: 'ratio', min: 0.8 },
      dsmRuns: rate(size, gwUp),
      baseRuns: rate(size, directUp),
      note: `both from a Node client in the bench process; CPU per GiB: gateway+storage ${cpuPerGiB(med(gwUp), size)} s, storage alone ${cpuPerGiB(med(directUp), size)} s`,
    },
    {
      name: `gateway POST /files ${label}, vs one bare Node hop (MiB/s)`,
      unit: 'MiB/s',
      dsm: median(rate(size, gwUp)),
      base: median(rate(size, pipeUp)),
      baseLabel: 'storage protocol upload through a Node TCP pipe',
      target: { kind: 'none' },
      dsmRuns: rate(size, gwUp),
      baseRuns: rate(size, pipeUp),
      note:
        `the least one Node process in the path costs here (refs.ts): the pipe upload is ` +
        `${(median(rate(size, pipeUp)) / median(rate(size, directUp))).toFixed(2)}× the direct one; ` +
        `CPU per GiB: pipe+storage ${cpuPerGiB(med(pipeUp), size)} s, gateway+storage ${cpuPerGiB(med(gwUp), size)} s`,
    },
  );
  c.details.push({
    name: `gateway POST ${label}`,
    text:
      `runs MiB/s gateway [${show(rate(size, gwUp))}] storage protocol [${show(rate(size, directUp))}] ` +
      `through a Node TCP pipe [${show(rate(size, pipeUp))}]; ` +
      `median run: ${perGiB(med(gwUp), size, 'gateway+storage')}; direct: ${perGiB(med(directUp), size, 'storage')}; ` +
      `pipe: ${perGiB(med(pipeUp), size, 'pipe+storage')}`,
  });

  // the same bytes for nginx
  const ngxName = `gw-${size}.bin`;
  log(`gateway: writing nginx's copy (${label})`);
  await writePattern(join(c.www, ngxName), size);
  await settleWriteback(60_000, log);
  const gwPath = `/files/${fileId}`;
  const ngxPath = `/${ngxName}`;
  const urls: BigUrls = {
    gateway: `http://127.0.0.1:${c.port}${gwPath}`,
    pipe: `http://127.0.0.1:${t.pipe.port}${ngxPath}`,
    nginx: `http://127.0.0.1:${c.nginxPort}${ngxPath}`,
    proxy: `http://127.0.0.1:${t.proxy.port}${ngxPath}`,
  };
  return { rows, gwPath, ngxPath, urls };
}

interface BigUrls {
  gateway: string;
  pipe: string;
  nginx: string;
  proxy: string;
}

/** The big file with curl from the gateway, the TCP pipe, nginx and the http proxy; CPU per GiB. */
async function bigGets(o: BenchOptions, c: GatewayCtx, t: BigTools, urls: BigUrls): Promise<Row[]> {
  const { log } = o;
  const size = o.largeSize;
  const label = sizeLabel(size);
  const rows: Row[] = [];
  // warm-up: page cache, JIT, stat cache
  for (const u of Object.values(urls)) curlRate(t.curl, u, size);

  // whole-file GETs with curl, interleaved; CPU of each server alone
  type Who = keyof typeof urls;
  const order: Who[] = ['gateway', 'pipe', 'nginx', 'proxy'];
  const pidsOf = (w: Who) =>
    w === 'gateway'
      ? c.pids()
      : w === 'pipe'
        ? [t.pipe.pid]
        : w === 'proxy'
          ? [t.proxy.pid]
          : c.nginx.workerPids();
  const rates: Record<Who, number[]> = { gateway: [], pipe: [], nginx: [], proxy: [] };
  const cpu: Record<Who, CpuTimes> = Object.fromEntries(order.map((w) => [w, { user: 0, sys: 0 }])) as Record<
    Who,
    CpuTimes
  >;
  const storageCpu: CpuTimes = { user: 0, sys: 0 };
  for (let r = 0; r < o.reps; r++) {
    for (const w of order) {
      log(`gateway: GET ${label} #${r + 1} with curl: ${w}`);
      const pids = pidsOf(w);
      const c0 = cpuSplitOf(pids);
      const s0 = cpuSplitOf([c.storagePid]);
      rates[w].push(curlRate(t.curl, urls[w], size));
      addCpu(cpu[w], cpuDiff(c0, cpuSplitOf(pids)));
      if (w === 'gateway') addCpu(storageCpu, cpuDiff(s0, cpuSplitOf([c.storagePid])));
    }
  }
  const perGiBOf = (x: CpuTimes) => ((x.user + x.sys) * GiB) / size / o.reps;
  const names: Record<Who, string> = {
    gateway: 'gateway',
    pipe: 'Node TCP pipe → nginx',
    nginx: 'nginx',
    proxy: 'Node http proxy → nginx',
  };
  for (const w of order) {
    c.references.push({
      work: `GET ${label}`,
      server: names[w],
      client: 'curl',
      value: median(rates[w]),
      unit: 'MiB/s',
      cpu: `${cpuText(cpu[w], GiB / size / o.reps, 's', 2)} per GiB`,
    });
  }
  rows.push(
    {
      name: `gateway GET ${label}, curl (MiB/s)`,
      unit: 'MiB/s',
      dsm: median(rates.gateway),
      base: median(rates.pipe),
      baseLabel: 'Node TCP pipe',
      target: { kind: 'ratio', min: 0.9 },
      dsmRuns: rates.gateway,
      baseRuns: rates.pipe,
      note: `nginx ${median(rates.nginx).toFixed(0)}, Node http proxy ${median(rates.proxy).toFixed(0)} MiB/s`,
    },
    {
      name: `gateway CPU per GiB of GET ${label} (s)`,
      unit: 's',
      dsm: perGiBOf(cpu.gateway),
      base: perGiBOf(cpu.pipe),
      baseLabel: 'Node TCP pipe',
      target: { kind: 'atMost', value: 1 },
      note: `storage ${perGiBOf(storageCpu).toFixed(2)} s/GiB; nginx ${perGiBOf(cpu.nginx).toFixed(2)}`,
    },
  );
  c.details.push({
    name: `gateway GET ${label}`,
    text:
      `curl, runs MiB/s: ${order.map((w) => `${names[w]} [${show(rates[w])}]`).join(', ')}; CPU per GiB: ` +
      order.map((w) => `${names[w]} ${cpuText(cpu[w], GiB / size / o.reps, 's', 2)}`).join(', ') +
      `, storage (for the gateway) ${cpuText(storageCpu, GiB / size / o.reps, 's', 2)}`,
  });

  return rows;
}

/** One range in the middle of the big file (206), as a player's seek or a CDN's slice. */
async function mediumRange(o: BenchOptions, c: GatewayCtx, t: BigTools, urls: BigUrls): Promise<Row[]> {
  const { log } = o;
  const size = o.largeSize;
  const label = sizeLabel(size);
  const rows: Row[] = [];
  const rangeSize = o.mediumSize;
  const from = Math.floor(size / 2) - Math.floor(rangeSize / 2) + 12_345;
  const range = `${from}-${from + rangeSize - 1}`;
  const rangeLabel = sizeLabel(rangeSize);
  const gwRange: number[] = [];
  const ngxRange: number[] = [];
  const rangeReps = Math.max(3, 2 * o.reps + 1);
  log(`gateway: ${rangeReps} × range ${rangeLabel} from each (curl)`);
  for (let r = 0; r < rangeReps; r++) {
    gwRange.push(curlRate(t.curl, urls.gateway, rangeSize, range));
    ngxRange.push(curlRate(t.curl, urls.nginx, rangeSize, range));
  }
  rows.push({
    name: `gateway range ${rangeLabel} of ${label}, curl (MiB/s)`,
    unit: 'MiB/s',
    dsm: median(gwRange),
    base: median(ngxRange),
    baseLabel: 'nginx',
    target: { kind: 'none' },
    dsmRuns: gwRange,
    baseRuns: ngxRange,
  });
  c.details.push({
    name: `gateway range ${rangeLabel}`,
    text: `curl, runs MiB/s gateway [${show(gwRange)}] nginx [${show(ngxRange)}]`,
  });
  return rows;
}

/** First byte of 1 MiB ranges at random offsets of the big file, one keep-alive connection (curl). */
async function firstByte(o: BenchOptions, c: GatewayCtx, curl: string, gwPath: string, ngxPath: string) {
  const size = o.largeSize;
  const n = o.quick ? 50 : 300;
  const ranges = offsets(n, size, SEEK_RANGE);
  o.log(`gateway: first byte of ${n} ranges of ${sizeLabel(SEEK_RANGE)} (curl, one connection)`);
  const gwUrl = `http://127.0.0.1:${c.port}${gwPath}`;
  const ngxUrl = `http://127.0.0.1:${c.nginxPort}${ngxPath}`;
  // warm-up (connections, JIT); then nginx and the gateway on the same offsets
  curlFirstBytes(curl, gwUrl, ranges.slice(0, 10));
  curlFirstBytes(curl, ngxUrl, ranges.slice(0, 10));
  const gw = curlFirstBytes(curl, gwUrl, ranges);
  const ngx = curlFirstBytes(curl, ngxUrl, ranges);
  const gl = latencyOf(gw) as Latency;
  const nl = latencyOf(ngx) as Latency;
  const work = `first byte of ${sizeLabel(SEEK_RANGE)} ranges of ${sizeLabel(size)}`;
  c.references.push(
    { work, server: 'gateway', client: 'curl, 1 connection', value: null, unit: '', latency: gl },
    { work, server: 'nginx', client: 'curl, 1 connection', value: null, unit: '', latency: nl },
  );
  return {
    name: `first byte of a ${sizeLabel(SEEK_RANGE)} range of ${sizeLabel(size)}, 1 connection, p99 (ms)`,
    unit: 'ms',
    dsm: gl.p99,
    base: nl.p99,
    baseLabel: 'nginx',
    target: { kind: 'max', value: 5 },
    dsmLatency: gl,
    baseLatency: nl,
    note: `${n} random offsets, curl --next (one connection)`,
  } satisfies Row;
}

/** 100 concurrent GETs of one 4 MiB range: byte-exact answers, and the storage slice reads they cost. */
async function rangeStorm(o: BenchOptions, c: GatewayCtx): Promise<Row> {
  const from = 8 * MiB; // slice-aligned: 4 slices of 1 MiB
  const to = from + STORM_RANGE - 1;
  const name = `range storm: storage slice reads for ${STORM_REQUESTS} × one ${sizeLabel(STORM_RANGE)} range`;
  // a file of its own, so that no slice of it is in the gateway's cache from the rows before
  // (on a new connection: a kept-alive one may have been closed by the gateway's idle timeout)
  const agent = new Agent({ keepAlive: false });
  const fresh = await post(agent, c.port, from + STORM_RANGE + MiB).finally(() => agent.destroy());
  const gwPath = `/files/${fresh.id}`;
  const metrics = async () => {
    try {
      return sliceReadsOf(await getText(c.adminPort, '/metrics'));
    } catch {
      return null;
    }
  };
  o.log(`gateway: range storm, ${STORM_REQUESTS} × bytes=${from}-${to}`);
  const before = await metrics();
  const block = patternBlock();
  const t0 = performance.now();
  const times: number[] = [];
  const wrong: string[] = [];
  await Promise.all(
    Array.from(
      { length: STORM_REQUESTS },
      () =>
        new Promise<void>((resolve) => {
          const req = request(
            {
              host: '127.0.0.1',
              port: c.port,
              path: gwPath,
              agent: false,
              headers: { Range: `bytes=${from}-${to}` },
            },
            (res) => {
              if (res.statusCode !== 206) wrong.push(`HTTP ${res.statusCode}`);
              let at = from;
              let bad = false;
              res.on('data', (chunk: Buffer) => {
                // the file is patternChunks: byte x is block[x % 1 MiB]
                let i = 0;
                while (i < chunk.length && !bad) {
                  const off = at % MiB;
                  const n = Math.min(chunk.length - i, MiB - off);
                  if (Buffer.compare(chunk.subarray(i, i + n), block.subarray(off, off + n)) !== 0)
                    bad = true;
                  i += n;
                  at += n;
                }
              });
              res.on('end', () => {
                if (bad) wrong.push('bytes differ');
                else if (at !== to + 1 && res.statusCode === 206) wrong.push(`${at - from} bytes`);
                times.push(performance.now() - t0);
                resolve();
              });
              res.on('error', (e) => {
                wrong.push(e.message);
                resolve();
              });
            },
          );
          req.setTimeout(60_000, () => req.destroy(new Error('no answer within 60 s')));
          req.on('error', (e) => {
            wrong.push(e.message);
            resolve();
          });
          req.end();
        }),
    ),
  );
  const after = await metrics();
  const reads = before && after ? after.value - before.value : null;
  const latency = latencyOf(times);
  const wrongText = wrong.length
    ? `; ${wrong.length} WRONG: ${[...new Set(wrong)].slice(0, 3).join(', ')}`
    : '';
  c.details.push({
    name: 'range storm',
    text:
      `${STORM_REQUESTS} concurrent GETs of bytes=${from}-${to}: ${STORM_REQUESTS - wrong.length} byte-exact 206s` +
      wrongText +
      `, all done in ${Math.max(...times).toFixed(0)} ms; ` +
      (after ? `${after.name} ${before?.value} → ${after.value}` : 'no slice-read counter on /metrics'),
  });
  return {
    name,
    unit: 'reads',
    dsm: wrong.length ? null : reads,
    base: null,
    baseLabel: '',
    target: { kind: 'atMost', value: 4 },
    dsmLatency: latency,
    note: wrong.length
      ? `answers were wrong${wrongText}`
      : after
        ? `${after.name} on the admin /metrics; p50/p99: completion`
        : "n/a: the gateway's /metrics has no slice-read counter in this tree",
  };
}

/** Memory: 50 concurrent big streams, bounded in time. */
async function streams(
  o: BenchOptions,
  c: GatewayCtx,
  gwPath: string,
  ngxPath: string,
  idleRss: number,
): Promise<Row[]> {
  const label = sizeLabel(o.largeSize);
  const streamMs = o.loopMs * 2;
  o.log(`gateway: ${GATEWAY_STREAMS} concurrent ${label} streams for ${streamMs} ms: gateway`);
  const gw = await concurrentStreams(c.port, gwPath, GATEWAY_STREAMS, streamMs, () => c.pids());
  o.log(`gateway: ${GATEWAY_STREAMS} concurrent ${label} streams for ${streamMs} ms: nginx`);
  const ngx = await concurrentStreams(c.nginxPort, ngxPath, GATEWAY_STREAMS, streamMs, () =>
    c.nginx.workerPids(),
  );
  const text = (s: typeof gw) =>
    `${s.answered}/${GATEWAY_STREAMS} answered 200, ${(s.bytes / MiB / (s.ms / 1000)).toFixed(0)} MiB/s in all` +
    (s.failed.length ? `, failures: ${[...new Set(s.failed)].join(', ')}` : '');
  c.details.push({
    name: `gateway ${GATEWAY_STREAMS} streams`,
    text: `${streamMs} ms each: gateway ${text(gw)}; nginx ${text(ngx)}; gateway RSS idle ${(idleRss / MiB).toFixed(0)} MiB`,
  });
  return [
    {
      name: `gateway RSS peak, ${GATEWAY_STREAMS} × ${label} streams (MiB)`,
      unit: 'MiB',
      dsm: gw.answered === GATEWAY_STREAMS ? gw.peakRss / MiB : null,
      base: ngx.peakRss / MiB,
      baseLabel: 'nginx worker',
      target: { kind: 'max', value: 200 },
      note: text(gw),
    },
    {
      name: 'gateway RSS idle, after start (MiB)',
      unit: 'MiB',
      dsm: idleRss / MiB,
      base: null,
      baseLabel: '',
      target: { kind: 'none' },
    },
  ];
}

interface SmallTools {
  wrk: string;
  proxy: ReferenceServer;
  pipe: ReferenceServer;
}

/**
 * 4 KiB GETs with `wrk -t1 -c64` (nginx, the Node http proxy and TCP pipe in front of it, the
 * gateway with its small-file cache off and on, at 1 and 2 workers) and 4 KiB POSTs at 16.
 */
async function smallRequests(o: BenchOptions, c: GatewayCtx, t: SmallTools): Promise<Row[]> {
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
      const r = await post(agent, c.port, size);
      gwPaths.push(`/files/${r.id}`);
    }
  } finally {
    agent.destroy();
  }
  const ngxPaths = Array.from({ length: FILES }, (_, i) => `/gw-small/${i}.bin`);
  // the limits of Node itself on this path: the bare pair and Node's http server from memory (refs.ts)
  const bareStorage = await ReferenceServer.start('bare-storage', 0, 10_000, join(dir, '0.bin'));
  const bareGateway = await ReferenceServer.start('bare-gateway', bareStorage.port).catch(async (e) => {
    await bareStorage.stop();
    throw e;
  });
  const memory = await ReferenceServer.start('http-memory', 0).catch(async (e) => {
    await bareGateway.stop();
    await bareStorage.stop();
    throw e;
  });
  try {
    return await measureSmall();
  } finally {
    await memory.stop();
    await bareGateway.stop();
    await bareStorage.stop();
  }

  async function measureSmall(): Promise<Row[]> {
    const seconds = Math.max(1, Math.round(o.loopMs / 1000));
    const tool = `wrk -t1 -c${GATEWAY_CONCURRENCY}`;

    interface Measured {
      runs: WrkResult[];
      rate: number;
      latency: Latency | undefined;
      cpu: CpuTimes[];
      requests: number;
      errors: string[];
    }
    interface Spec {
      name: string;
      port: number;
      paths: string[];
      /** Process groups whose CPU is counted (the server's; the storage's). */
      groups: () => number[][];
      connections?: number;
      postBytes?: number;
    }
    /**
     * A 1 s warm-up of each, then `loopReps` rounds of one wrk run of each in turn (so that a
     * change of the machine's load hits all of them alike); CPU of each process group.
     */
    const measureAll = async (specs: Spec[]): Promise<Measured[]> => {
      const run = (x: Spec, secs: number) =>
        runWrk(t.wrk, {
          port: x.port,
          paths: x.paths,
          connections: x.connections ?? GATEWAY_CONCURRENCY,
          seconds: secs,
          postBytes: x.postBytes,
          scratch: o.dir,
        });
      for (const x of specs) await run(x, 1);
      const runs: WrkResult[][] = specs.map(() => []);
      const cpu: CpuTimes[][] = specs.map((x) => x.groups().map(() => ({ user: 0, sys: 0 })));
      for (let r = 0; r < o.loopReps; r++) {
        for (const [k, x] of specs.entries()) {
          log(
            `gateway: ${label} ${x.postBytes ? 'POST' : 'GET'}, ${x.name} #${r + 1} (${seconds} s, wrk -c${x.connections ?? GATEWAY_CONCURRENCY})`,
          );
          const g = x.groups();
          const c0 = g.map(cpuSplitOf);
          (runs[k] as WrkResult[]).push(await run(x, seconds));
          g.forEach((pids, i) => {
            addCpu((cpu[k] as CpuTimes[])[i] as CpuTimes, cpuDiff(c0[i] as CpuTimes, cpuSplitOf(pids)));
          });
        }
      }
      return specs.map((_, k) => {
        const rs = runs[k] as WrkResult[];
        return {
          runs: rs,
          rate: mean(rs.map((r) => r.rps)),
          latency: rs.length
            ? {
                p50: median(rs.map((r) => r.latency?.p50 ?? Number.NaN)),
                p99: median(rs.map((r) => r.latency?.p99 ?? Number.NaN)),
              }
            : undefined,
          cpu: cpu[k] as CpuTimes[],
          requests: rs.reduce((a, r) => a + r.requests, 0),
          errors: rs.map((r) => r.errors).filter(Boolean),
        };
      });
    };
    const perReq = (m: Measured, i = 0) =>
      cpuText(m.cpu[i] as CpuTimes, 1e6 / Math.max(1, m.requests), 'µs', 0);
    const ref = (server: string, m: Measured, cpuText: string, note?: string, client = tool): Reference => ({
      work: `${label} ${client.includes('POST') ? 'POST' : 'GET'}`,
      server,
      client,
      value: m.errors.length ? null : m.rate,
      unit: '/s',
      latency: m.latency,
      cpu: cpuText,
      note: m.errors.length ? `ERRORS: ${m.errors.join(' | ')}` : note,
    });
    const rated = (m: Measured) => (m.errors.length ? null : m.rate);
    /** Average cores the i-th process group used during the timed runs. */
    const coresOf = (m: Measured, i: number) => {
      const x = m.cpu[i] as CpuTimes;
      return ((x.user + x.sys) / Math.max(1, m.runs.length * seconds)).toFixed(2);
    };
    const usPer = (m: Measured, i: number) => {
      const x = m.cpu[i] as CpuTimes;
      return (((x.user + x.sys) * 1e6) / Math.max(1, m.requests)).toFixed(0);
    };

    const gwGroups = () => [c.pids(), [c.storagePid]];
    const nginxSpec: Spec = {
      name: 'nginx',
      port: c.nginxPort,
      paths: ngxPaths,
      groups: () => [c.nginx.workerPids()],
    };
    const proxySpec: Spec = {
      name: 'Node http proxy',
      port: t.proxy.port,
      paths: ngxPaths,
      groups: () => [[t.proxy.pid]],
    };
    const refused = await c.reconfigure(SMALL_FILE_CACHE.off);
    const hasCache = refused === null;
    const noCache = `cache: not available in this tree (the gateway refused ${JSON.stringify(SMALL_FILE_CACHE.off)}: ${refused})`;
    const [ngx, prx, pip, gwOff, bare] = (await measureAll([
      nginxSpec,
      proxySpec,
      { name: 'Node TCP pipe', port: t.pipe.port, paths: ngxPaths, groups: () => [[t.pipe.pid]] },
      { name: hasCache ? 'gateway, cache off' : 'gateway', port: c.port, paths: gwPaths, groups: gwGroups },
      {
        name: 'bare pair',
        port: bareGateway.port,
        paths: ngxPaths,
        groups: () => [[bareGateway.pid], [bareStorage.pid]],
      },
    ])) as [Measured, Measured, Measured, Measured, Measured];
    const oneWorkerPids = c.pids().length;
    c.references.push(
      ref('nginx', ngx, `${perReq(ngx)} per request`),
      ref('Node http proxy → nginx', prx, `${perReq(prx)} per request`),
      ref('Node TCP pipe → nginx', pip, `${perReq(pip)} per request`),
      ref(
        hasCache ? 'gateway, cache off' : 'gateway',
        gwOff,
        `gateway ${perReq(gwOff, 0)}, storage ${perReq(gwOff, 1)} per request`,
      ),
      ref(
        'bare pair: Node http → Node storage-protocol server',
        bare,
        `http ${perReq(bare, 0)}, storage ${perReq(bare, 1)} per request`,
      ),
    );

    // 4 KiB POST /files at 16 connections
    const [postRun] = (await measureAll([
      {
        name: 'gateway POST /files',
        port: c.port,
        paths: ['/files'],
        groups: gwGroups,
        connections: POST_CONCURRENCY,
        postBytes: size,
      },
    ])) as [Measured];
    c.references.push(
      ref(
        'gateway',
        postRun,
        `gateway ${perReq(postRun, 0)}, storage ${perReq(postRun, 1)} per upload`,
        undefined,
        `wrk -t1 -c${POST_CONCURRENCY}, POST /files`,
      ),
    );

    // the small-file cache on
    let gwOn: Measured | null = null;
    let ngxOn: Measured | null = null;
    let mem: Measured | null = null;
    let onNote = noCache;
    if (hasCache) {
      const why = await c.reconfigure(SMALL_FILE_CACHE.on);
      if (why) onNote = `cache on: the gateway did not start (${why})`;
      else {
        [gwOn, ngxOn, mem] = (await measureAll([
          { name: 'gateway, cache on', port: c.port, paths: gwPaths, groups: gwGroups },
          { ...nginxSpec, name: 'nginx (again, beside the cache)' },
          {
            name: 'Node http, 4 KiB from memory',
            port: memory.port,
            paths: ngxPaths,
            groups: () => [[memory.pid]],
          },
        ])) as [Measured, Measured, Measured];
        c.references.push(
          ref(
            'gateway, cache on',
            gwOn,
            `gateway ${perReq(gwOn, 0)}, storage ${perReq(gwOn, 1)} per request`,
          ),
          ref('nginx (again, beside the cache)', ngxOn, `${perReq(ngxOn)} per request`),
          ref('Node http server, 4 KiB from memory', mem, `${perReq(mem)} per request`),
        );
        onNote = `cache on: ${JSON.stringify(SMALL_FILE_CACHE.on)}`;
      }
    }

    // 2 workers (cache off)
    let gw2: Measured | null = null;
    let prx2: Measured | null = null;
    let workersNote = '';
    {
      const why = await c.reconfigure({ ...(hasCache ? SMALL_FILE_CACHE.off : {}), workers: 2 });
      if (why) workersNote = `n/a: the gateway did not start with workers 2 (${why})`;
      else {
        const procs = c.pids().length;
        if (procs <= oneWorkerPids) {
          workersNote = `n/a: workers 2 runs ${procs} process(es), as workers 1 did: node:cluster entry not in this tree`;
        } else {
          [gw2, prx2] = (await measureAll([
            { name: 'gateway, 2 workers', port: c.port, paths: gwPaths, groups: gwGroups },
            { ...proxySpec, name: 'Node http proxy (again, beside 2 workers)' },
          ])) as [Measured, Measured];
          c.references.push(
            ref(
              'gateway, 2 workers',
              gw2,
              `gateway ${perReq(gw2, 0)}, storage ${perReq(gw2, 1)} per request`,
              `${procs} processes`,
            ),
            ref('Node http proxy (again, beside 2 workers)', prx2, `${perReq(prx2)} per request`),
          );
          workersNote =
            `${procs} gateway processes (primary + workers) vs ${oneWorkerPids}, ${coresOf(gw2, 0)} cores used (1 worker: ${coresOf(gwOff, 0)}); ` +
            `× the Node http proxy run beside it: ${prx2.rate > 0 ? (gw2.rate / prx2.rate).toFixed(2) : '?'}`;
        }
      }
    }

    const ratioText = (a: Measured, b: Measured) => (b.rate > 0 ? `${(a.rate / b.rate).toFixed(2)}×` : '?×');
    const errText = (m: Measured | null) => (m?.errors.length ? `ERRORS: ${m.errors.join(' | ')}` : '');
    c.details.push({
      name: `gateway ${label} requests`,
      text:
        `${tool}, runs/s: nginx [${show(ngx.runs.map((r) => r.rps))}], Node http proxy [${show(prx.runs.map((r) => r.rps))}], ` +
        `TCP pipe [${show(pip.runs.map((r) => r.rps))}], gateway [${show(gwOff.runs.map((r) => r.rps))}]` +
        (gwOn ? `, gateway cache on [${show(gwOn.runs.map((r) => r.rps))}]` : '') +
        (ngxOn ? `, nginx beside it [${show(ngxOn.runs.map((r) => r.rps))}]` : '') +
        (gw2 ? `, gateway 2 workers [${show(gw2.runs.map((r) => r.rps))}]` : '') +
        `, bare pair [${show(bare.runs.map((r) => r.rps))}]` +
        (mem ? `, Node http from memory [${show(mem.runs.map((r) => r.rps))}]` : '') +
        `; POST wrk -c${POST_CONCURRENCY} [${show(postRun.runs.map((r) => r.rps))}]; CPU per GET: gateway ${perReq(gwOff, 0)}, ` +
        `storage ${perReq(gwOff, 1)}, Node http proxy ${perReq(prx)}, nginx ${perReq(ngx)}` +
        [gwOff, gwOn, gw2, postRun, ngx, prx, pip, ngxOn, prx2, bare, mem]
          .map(errText)
          .filter(Boolean)
          .map((e) => `; ${e}`)
          .join(''),
    });
    const cacheLabel = hasCache ? ', cache off' : '';
    return [
      {
        name: `gateway ${label} GET/s, ${tool}${cacheLabel}`,
        unit: '/s',
        dsm: rated(gwOff),
        base: rated(prx),
        baseLabel: 'Node http proxy',
        target: { kind: 'ratio', min: 1 },
        dsmLatency: gwOff.latency,
        baseLatency: prx.latency,
        dsmRuns: gwOff.runs.map((r) => r.rps),
        baseRuns: prx.runs.map((r) => r.rps),
        note:
          errText(gwOff) ||
          `CPU per GET: gateway ${usPer(gwOff, 0)} + storage ${usPer(gwOff, 1)} µs, Node http proxy ${usPer(prx, 0)} µs; ` +
            `cores used: gateway ${coresOf(gwOff, 0)}, storage ${coresOf(gwOff, 1)}, proxy ${coresOf(prx, 0)}` +
            (hasCache ? '' : `; ${noCache}`),
      },
      {
        name: `gateway ${label} GET/s, ${tool}${cacheLabel}, vs the bare pair`,
        unit: '/s',
        dsm: rated(gwOff),
        base: rated(bare),
        baseLabel: 'bare Node pair',
        target: { kind: 'none' },
        dsmLatency: gwOff.latency,
        baseLatency: bare.latency,
        note:
          errText(bare) ||
          `the least two Node processes cost on this path (refs.ts): ${ratioText(bare, prx)} the Node http proxy; ` +
            `CPU per GET: bare http ${usPer(bare, 0)} + bare storage ${usPer(bare, 1)} µs; cores used: ${coresOf(bare, 0)} + ${coresOf(bare, 1)}`,
      },
      {
        name: `gateway ${label} GET/s, ${tool}${cacheLabel}, vs nginx`,
        unit: '/s',
        dsm: rated(gwOff),
        base: rated(ngx),
        baseLabel: 'nginx',
        target: { kind: 'none' },
        dsmLatency: gwOff.latency,
        baseLatency: ngx.latency,
        note: 'the issue expects ≈ 0.25× here',
      },
      {
        name: `gateway ${label} GET/s, ${tool}, cache on`,
        unit: '/s',
        dsm: gwOn ? rated(gwOn) : null,
        base: rated(ngxOn ?? ngx),
        baseLabel: ngxOn ? 'nginx, run beside it' : 'nginx',
        target: { kind: 'ratio', min: 0.5 },
        dsmLatency: gwOn?.latency,
        baseLatency: (ngxOn ?? ngx).latency,
        note:
          errText(gwOn) ||
          (gwOn
            ? `CPU per GET: gateway ${usPer(gwOn, 0)} µs, ${coresOf(gwOn, 0)} cores used; ${onNote}`
            : onNote),
      },
      {
        name: `gateway ${label} GET/s, ${tool}, cache on, vs Node http from memory`,
        unit: '/s',
        dsm: gwOn ? rated(gwOn) : null,
        base: mem ? rated(mem) : null,
        baseLabel: 'Node http, from memory',
        target: { kind: 'none' },
        dsmLatency: gwOn?.latency,
        baseLatency: mem?.latency,
        note:
          errText(mem) ||
          (mem && ngxOn
            ? `Node's own http server answering 4 KiB from memory (refs.ts): ${ratioText(mem, ngxOn)} nginx; CPU per GET ${usPer(mem, 0)} µs, ${coresOf(mem, 0)} cores used`
            : onNote),
      },
      {
        name: `gateway ${label} POST /files/s, wrk -t1 -c${POST_CONCURRENCY}`,
        unit: '/s',
        dsm: rated(postRun),
        base: null,
        baseLabel: '',
        target: { kind: 'min', value: 1500 },
        dsmLatency: postRun.latency,
        note:
          errText(postRun) ||
          `CPU per upload: gateway ${perReq(postRun, 0)}, storage ${perReq(postRun, 1)}; ` +
            `cores used: gateway ${coresOf(postRun, 0)}, storage ${coresOf(postRun, 1)}`,
      },
      {
        name: `gateway ${label} GET/s, ${tool}, 2 workers`,
        unit: '/s',
        dsm: gw2 ? rated(gw2) : null,
        base: rated(gwOff),
        baseLabel: '1 worker',
        target: { kind: 'none' },
        dsmLatency: gw2?.latency,
        baseLatency: gwOff.latency,
        note: errText(gw2) || workersNote,
      },
    ];
  }
}
