import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { open, unlink } from 'node:fs/promises';
import { Agent, get } from 'node:http';
import { cpus, loadavg, release, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DsmClient, newFileId } from '@dsm/client';
import { nodeTransport } from '@dsm/client/node';
import { Cluster, portCount } from '@dsm/cluster';
import { freePortRange } from '@dsm/testkit';
import { curlRate, ensureTool } from './clients.ts';
import { GATEWAY_CONCURRENCY, GATEWAY_STREAMS, gatewayBench } from './gateway.ts';
import { ensureNginx, nginxVersion, PrivateNginx } from './nginx.ts';
import {
  type CpuTimes,
  cpuSplitOf,
  OtherLoad,
  type OtherLoadResult,
  settleWriteback,
  treePids,
} from './proc.ts';
import { readRss, withRss } from './rss.ts';
import { GiB, KiB, MiB, patternBlock, patternChunks, patternSource } from './source.ts';
import { type Latency, latencyOf, median, type Reference, type Row } from './table.ts';

type Address = { host: string; port: number };
type Ids = { appId: string; userId: string; fileId: string };

export interface BenchOptions {
  /** The short smoke run (`--quick`). */
  quick: boolean;
  /** Scratch folder for the cluster, nginx and the baseline files (one disk for all of them). */
  dir: string;
  /** Size of the big transfers (1 GiB; 64 MiB with --quick). */
  largeSize: number;
  /** Size of the medium transfers (64 MiB; 16 MiB with --quick). */
  mediumSize: number;
  /** Payload of the small-request loops. */
  smallSize: number;
  /** Repetitions of each big transfer (median reported). */
  reps: number;
  /** Repetitions of each small-request loop (mean reported). */
  loopReps: number;
  /** Duration of one small-request loop. */
  loopMs: number;
  /** Upper bound of requests in one loop. */
  maxOps: number;
  concurrency: number;
  /** Sections to run. */
  only: ReadonlySet<Section>;
  /** When set, the cluster nodes write V8 CPU profiles (see cpu-profile.js) into this folder. */
  profileDir?: string;
  /** The `dsm` entry the cluster runs: the bundle of `npm run build` (default) or the sources. */
  entry?: string;
  log(msg: string): void;
}

export type Section = 'large' | 'medium' | 'small' | 'gateway';
export const SECTIONS: readonly Section[] = ['large', 'medium', 'small', 'gateway'];

export interface Machine {
  date: string;
  cpus: number;
  cpuModel: string;
  memGiB: number;
  kernel: string;
  node: string;
  nginx: string;
  loadAvgAtStart: number[];
  loadAvgAtEnd: number[];
}

export interface Detail {
  name: string;
  text: string;
}

export interface BenchResult {
  machine: Machine;
  rows: Row[];
  details: Detail[];
  /** Every server/client pair measured (nginx, the bare Node references, dsm). */
  references: Reference[];
  /** CPU (cores, average) used by other processes on the machine during each section. */
  otherLoad: Partial<Record<Section, OtherLoadResult>>;
}

/** Deferred clean-up steps, run in reverse order; a step deferred after close() runs at once. */
export class Scope {
  readonly #steps: Array<() => unknown> = [];
  #closed = false;

  get closed(): boolean {
    return this.#closed;
  }

  async defer(step: () => unknown): Promise<void> {
    if (this.#closed) await runQuietly(step);
    else this.#steps.push(step);
  }

  async close(): Promise<void> {
    this.#closed = true;
    while (this.#steps.length > 0) await runQuietly(this.#steps.pop() as () => unknown);
  }
}

async function runQuietly(step: () => unknown): Promise<void> {
  try {
    await step();
  } catch (e) {
    process.stderr.write(`clean-up step failed: ${(e as Error).message}\n`);
  }
}

const APP_ID = 'tnvideo';
const CONTENT_TYPE = 'application/octet-stream';
const STORAGE = 'group001-s1';
const GATEWAY = 'gateway1';
const PROFILE_PRELOAD = fileURLToPath(new URL('./cpu-profile.js', import.meta.url));

export function sizeLabel(n: number): string {
  if (n >= GiB && n % GiB === 0) return `${n / GiB} GiB`;
  if (n >= MiB && n % MiB === 0) return `${n / MiB} MiB`;
  if (n >= KiB && n % KiB === 0) return `${n / KiB} KiB`;
  return `${n} B`;
}

const mib = (bytes: number) => bytes / MiB;
const mibPerSec = (bytes: number, ms: number) => bytes / MiB / (ms / 1000);

/** One timed run: wall time, CPU seconds of the server processes and of this process. */
export interface Timed {
  ms: number;
  server: CpuTimes;
  client: CpuTimes;
  peakRss: number;
}

/** CPU used by `pids` and by this process while `fn` runs. */
async function cpuDuring<T>(
  pids: number[],
  fn: () => Promise<T>,
): Promise<{ result: T; server: CpuTimes; client: CpuTimes }> {
  const s0 = cpuSplitOf(pids);
  const own0 = process.cpuUsage();
  const result = await fn();
  const own = process.cpuUsage(own0);
  const s1 = cpuSplitOf(pids);
  return {
    result,
    server: { user: s1.user - s0.user, sys: s1.sys - s0.sys },
    client: { user: own.user / 1e6, sys: own.system / 1e6 },
  };
}

export async function timed(serverPids: number[], fn: () => Promise<void>): Promise<Timed> {
  const t0 = performance.now();
  const { result, server, client } = await cpuDuring(serverPids, () => withRss(serverPids, fn));
  return { ms: performance.now() - t0, server, client, peakRss: result.peakRss };
}

/** `user+sys (user u, sys s)` scaled by `per`. */
export function cpuText(t: CpuTimes, per: number, unit: string, digits: number): string {
  const f = (x: number) => (x * per).toFixed(digits);
  return `${f(t.user + t.sys)} ${unit} (user ${f(t.user)}, sys ${f(t.sys)})`;
}

/** Runs `op` from `concurrency` workers until `durationMs` passed or `maxOps` started. */
async function loop(
  concurrency: number,
  durationMs: number,
  maxOps: number,
  op: (i: number) => Promise<void>,
): Promise<{ ops: number; ms: number; latencies: number[] }> {
  let next = 0;
  let done = 0;
  const latencies: number[] = [];
  const t0 = performance.now();
  const deadline = t0 + durationMs;
  const worker = async () => {
    while (next < maxOps && performance.now() < deadline) {
      const s = performance.now();
      await op(next++);
      latencies.push(performance.now() - s);
      done++;
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return { ops: done, ms: performance.now() - t0, latencies };
}

/** Resolves with the number of body bytes ('data' events, counted and discarded). */
function httpGet(agent: Agent, port: number, path: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = get({ host: '127.0.0.1', port, path, agent }, (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        reject(new Error(`GET ${path}: HTTP ${res.statusCode}`));
        return;
      }
      let n = 0;
      res.on('data', (c: Buffer) => {
        n += c.length;
      });
      res.on('end', () => resolve(n));
      res.on('error', reject);
    });
    req.on('error', reject);
  });
}

/**
 * Writes `size` pattern bytes to a new file and fsyncs it (the upload baseline); `onWritten`
 * is called when the last write returned, before the fsync.
 */
async function fsWrite(path: string, size: number, onWritten?: () => void): Promise<void> {
  const fh = await open(path, 'w');
  try {
    for (const chunk of patternChunks(size)) {
      let off = 0;
      while (off < chunk.length) off += (await fh.write(chunk, off, chunk.length - off)).bytesWritten;
    }
    onWritten?.();
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export function perGiB(t: Timed, bytes: number, server = 'server'): string {
  const per = GiB / bytes;
  return `${server} ${cpuText(t.server, per, 's', 2)}, client ${cpuText(t.client, per, 's', 2)} CPU/GiB`;
}

export async function runBench(o: BenchOptions, scope: Scope): Promise<BenchResult> {
  const { log } = o;
  const nginxBin = ensureNginx(log);
  const machine: Machine = {
    date: new Date().toISOString(),
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? 'unknown',
    memGiB: Math.round(totalmem() / GiB),
    kernel: release(),
    node: process.version,
    nginx: nginxVersion(nginxBin),
    loadAvgAtStart: loadavg().map((x) => Math.round(x * 100) / 100),
    loadAvgAtEnd: [],
  };
  const curl = ensureTool('curl', 'curl', log);
  const clusterDir = join(o.dir, 'cluster');
  const www = join(o.dir, 'www');
  const fsDir = join(o.dir, 'fs-baseline');
  for (const d of [clusterDir, join(www, 'small'), fsDir]) mkdirSync(d, { recursive: true });

  const withGateway = o.only.has('gateway');
  const shape = {
    trackers: 1,
    ids: 1,
    groups: ['group001'],
    storagesPerGroup: 1,
    gateways: withGateway ? 1 : 0,
  };
  // the cluster's ports (the launcher's scheme), then nginx's, then the gateway's admin listener
  const base = await freePortRange(portCount(shape) + 2);
  const nginxPort = base + portCount(shape);
  const adminPort = nginxPort + 1;
  log(`starting nginx on 127.0.0.1:${nginxPort}`);
  const nginx = await PrivateNginx.start(nginxBin, {
    prefix: join(o.dir, 'nginx'),
    root: www,
    port: nginxPort,
  });
  await scope.defer(() => nginx.stop());
  const onExit = () => nginx.killNow();
  process.once('exit', onExit);
  await scope.defer(() => process.off('exit', onExit));

  log(`starting the cluster in ${clusterDir} (ports ${base}..${base + portCount(shape) - 1})`);
  const env: Record<string, string> = { DSM_LOG_LEVEL: process.env.DSM_LOG_LEVEL ?? 'warn' };
  if (o.entry) env.DSM_ENTRY = o.entry;
  if (o.profileDir) {
    env.NODE_OPTIONS = `${process.env.NODE_OPTIONS ?? ''} --import ${PROFILE_PRELOAD}`.trim();
    env.DSM_BENCH_PROFILE_DIR = o.profileDir;
  }
  const cluster = await Cluster.start({
    dir: clusterDir,
    ...shape,
    basePort: base,
    // the HTTP gateway (`dsm gateway`) for the gateway section: default config but the
    // per-client caps, since every benchmark client comes from 127.0.0.1 (64 small GETs and 50
    // streams at once would be 429s past limits.downloadsPerClient), one worker (the 2-worker
    // row restarts it), and an admin listener for /metrics
    extra: {
      gateway: {
        limits: { connectionsPerClient: 1024, downloadsPerClient: 1024 },
        admin: { listen: `127.0.0.1:${adminPort}` },
        workers: 1,
      },
    },
    beatIntervalMs: 500,
    env,
  });
  await scope.defer(() => cluster.stop());
  const storagePid = cluster.nodes.get(STORAGE)?.pid;
  if (!storagePid) throw new Error(`no pid for ${STORAGE}`);
  const otherPids = [...cluster.nodes.values()]
    .filter((n) => n.name !== STORAGE && n.role !== 'gateway' && n.pid !== undefined)
    .map((n) => n.pid as number);

  const [thost, tport] = (cluster.addresses('tracker')[0] as string).split(':') as [string, string];
  const client = new DsmClient({
    trackers: [{ host: thost, port: Number(tport) }],
    transport: nodeTransport,
    maxPerAddress: o.concurrency,
    maxQueue: 4 * o.concurrency,
    ioTimeoutMs: 120_000,
    locateCacheMs: 0,
  });
  await scope.defer(() => client.close());
  const agent = new Agent({ keepAlive: true, maxSockets: o.concurrency });
  await scope.defer(() => agent.destroy());

  const addr = await locate(client, 30_000);
  log(`storage ${addr.host}:${addr.port} (pid ${storagePid}) is active; nginx pid ${nginx.pid}`);

  const rows: Row[] = [];
  const details: Detail[] = [];
  const references: Reference[] = [];
  const idleRss = readRss(storagePid) ?? 0;
  const nginxIdleRss = nginx.workerPids().reduce((s, p) => s + (readRss(p) ?? 0), 0);

  const storageDownload = async (ids: Ids, size: number) => {
    const r = await client.storage.download(addr, { ...ids, offset: 0, size: 0 });
    let n = 0;
    for await (const c of r.stream) n += c.length;
    if (n !== size || r.length !== size) throw new Error(`dsm download returned ${n} of ${size} bytes`);
  };
  const nginxDownload = async (path: string, size: number) => {
    const n = await httpGet(agent, nginxPort, path);
    if (n !== size) throw new Error(`nginx download returned ${n} of ${size} bytes`);
  };
  const storageUpload = async (ids: Ids, size: number, onEnd?: () => void) => {
    const stat = await client.storage.uploadExt(addr, ids, CONTENT_TYPE, patternSource(size, onEnd));
    if (stat.size !== size) throw new Error(`dsm upload stored ${stat.size} of ${size} bytes`);
  };

  /** Upload and download of one big size: rows and details. */
  const bigTransfers = async (size: number, withRssRows: boolean) => {
    const label = sizeLabel(size);
    const up: Timed[] = [];
    const fsUp: Timed[] = [];
    const servedName = `big-${size}.bin`;
    // Untimed first: the file the downloads read (dsm) and the one nginx serves, then one more
    // file written and removed. On this machine kind (a Firecracker VM whose balloon reports
    // free pages back to the host) a page the guest has not touched lately costs a host fault
    // on first use: touching 17 GiB took 70 s, twice in a row, and the storage's CPU for a
    // 1 GiB upload was 3.3-3.5 s into fresh pages against 1.75-2.2 s into pages used just
    // before. A timed run that removes its file leaves warm pages to the next one; the
    // runs were first-come (dsm's first two runs took fresh pages, fs+fsync's later ones the
    // pages dsm's runs had freed), so now every timed run of both starts from pages freed by
    // the run before it, as on a storage whose page cache has filled and recycles.
    log(`upload ${label}: untimed warm-up (the downloads' file, nginx's, one more written and removed)`);
    const keptIds: Ids = { appId: APP_ID, userId: 'bench-big', fileId: newFileId() };
    await storageUpload(keptIds, size);
    await fsWrite(join(www, servedName), size, () => {});
    const warmPath = join(fsDir, `big-${size}-warm.bin`);
    await fsWrite(warmPath, size, () => {});
    await unlink(warmPath);
    // time until the last byte was handed over (socket / file) vs. the whole operation
    const upTail: number[] = [];
    const fsTail: number[] = [];
    for (let r = 0; r < o.reps; r++) {
      const ids: Ids = { appId: APP_ID, userId: 'bench-big', fileId: newFileId() };
      log(`upload ${label} #${r + 1}: dsm`);
      let sentAt = 0;
      const t = await timed([storagePid], () =>
        storageUpload(ids, size, () => {
          sentAt = performance.now();
        }),
      );
      up.push(t);
      upTail.push(performance.now() - sentAt);
      await client.storage.delete(addr, ids);
      log(`upload ${label} #${r + 1}: fs + fsync`);
      const path = join(fsDir, `big-${size}-${r}.bin`);
      let writtenAt = 0;
      fsUp.push(
        await timed([], () =>
          fsWrite(path, size, () => {
            writtenAt = performance.now();
          }),
        ),
      );
      fsTail.push(performance.now() - writtenAt);
      await unlink(path);
    }
    // warm-up (JIT, connections, page cache) before the timed downloads
    await storageDownload(keptIds, size);
    await nginxDownload(`/${servedName}`, size);
    const down: Timed[] = [];
    const ngx: Timed[] = [];
    for (let r = 0; r < o.reps; r++) {
      log(`download ${label} #${r + 1}: dsm`);
      down.push(await timed([storagePid], () => storageDownload(keptIds, size)));
      log(`download ${label} #${r + 1}: nginx`);
      ngx.push(await timed(nginx.workerPids(), () => nginxDownload(`/${servedName}`, size)));
    }
    // reference: what nginx does for a native client (curl)
    const curlRates: number[] = [];
    for (let r = 0; r < o.reps; r++) {
      log(`download ${label} #${r + 1}: nginx to curl`);
      curlRates.push(curlRate(curl, `http://127.0.0.1:${nginxPort}/${servedName}`, size));
    }
    const rate = (ts: Timed[]) => ts.map((t) => mibPerSec(size, t.ms));
    const med = (ts: Timed[]) => ts[ts.map((t) => t.ms).indexOf(median(ts.map((t) => t.ms)))] ?? ts[0];
    const downRow: Row = {
      name: `download ${label} over the storage protocol (MiB/s)`,
      unit: 'MiB/s',
      dsm: median(rate(down)),
      base: median(curlRates),
      baseLabel: 'nginx to curl',
      target: { kind: 'none' },
      dsmRuns: rate(down),
      baseRuns: curlRates,
      note:
        "the seed's C++ storage is not on this machine: its ≥ 0.8× target cannot be checked here; " +
        `nginx through Node's http client ${median(rate(ngx)).toFixed(0)} MiB/s; dsm client: DsmClient (Node)`,
    };
    references.push(
      {
        work: `GET ${label}`,
        server: 'storage (storage protocol)',
        client: 'DsmClient (Node)',
        value: median(rate(down)),
        unit: 'MiB/s',
        cpu: `${cpuText((med(down) as Timed).server, GiB / size, 's', 2)} per GiB`,
      },
      {
        work: `GET ${label}`,
        server: 'nginx',
        client: "Node's http client",
        value: median(rate(ngx)),
        unit: 'MiB/s',
        cpu: `${cpuText((med(ngx) as Timed).server, GiB / size, 's', 2)} per GiB`,
      },
      { work: `GET ${label}`, server: 'nginx', client: 'curl', value: median(curlRates), unit: 'MiB/s' },
    );
    const upRow: Row = {
      name: `upload ${label} incl. fsync (MiB/s)`,
      unit: 'MiB/s',
      dsm: median(rate(up)),
      base: median(rate(fsUp)),
      baseLabel: 'fs+fsync',
      target: { kind: 'min', value: 400 },
      dsmRuns: rate(up),
      baseRuns: rate(fsUp),
    };
    const show = (xs: number[]) => xs.map((x) => x.toFixed(0)).join(', ');
    details.push({
      name: `download ${label}`,
      text:
        `runs MiB/s dsm [${show(rate(down))}] nginx [${show(rate(ngx))}]; ` +
        `median run: dsm ${perGiB(med(down) as Timed, size, 'storage')}; nginx ${perGiB(med(ngx) as Timed, size, 'nginx')}` +
        `; nginx to curl: [${show(curlRates)}] MiB/s`,
    });
    details.push({
      name: `upload ${label}`,
      text:
        `runs MiB/s dsm [${show(rate(up))}] fs+fsync [${show(rate(fsUp))}]; ` +
        `median run: dsm ${perGiB(med(up) as Timed, size, 'storage')}; fs+fsync ${cpuText((med(fsUp) as Timed).client, GiB / size, 's', 2)} CPU/GiB; ` +
        `ms after the last byte was sent (storage fsync + commit) [${show(upTail)}] of [${show(up.map((t) => t.ms))}] in all; ` +
        `fs+fsync: ms in fsync [${show(fsTail)}] of [${show(fsUp.map((t) => t.ms))}]`,
    });
    const rssRows: Row[] = [];
    if (withRssRows) {
      const peak = (ts: Timed[]) => mib(Math.max(...ts.map((t) => t.peakRss)));
      rssRows.push(
        {
          name: `storage RSS peak, ${label} download (MiB)`,
          unit: 'MiB',
          dsm: peak(down),
          base: peak(ngx),
          baseLabel: 'nginx worker',
          target: { kind: 'max', value: 100 },
        },
        {
          name: `storage RSS peak, ${label} upload (MiB)`,
          unit: 'MiB',
          dsm: peak(up),
          base: null,
          baseLabel: '',
          target: { kind: 'max', value: 100 },
        },
      );
    }
    return { downRow, upRow, rssRows };
  };

  const otherLoad: BenchResult['otherLoad'] = {};
  const section = async <T>(name: Section, fn: () => Promise<T>): Promise<T> => {
    // no section times the write-back of files an earlier one left in the page cache
    await settleWriteback(60_000, log);
    const load = new OtherLoad();
    const r = await fn();
    const other = load.stop();
    otherLoad[name] = other;
    if (other.top.length)
      details.push({ name: `other processes during ${name}`, text: other.top.join('; ') });
    return r;
  };
  /** A section that fails gives a row saying so; the sections after it still run. */
  const orFailure = async (name: Section, fn: () => Promise<Row[]>): Promise<Row[]> => {
    try {
      return await section(name, fn);
    } catch (e) {
      const msg = ((e as Error).message ?? String(e)).split('\n')[0] as string;
      log(`section ${name} FAILED: ${msg}`);
      details.push({ name: `section ${name} FAILED`, text: (e as Error).stack ?? msg });
      const note = `FAILED: ${msg.slice(0, 300)}`;
      return [
        {
          name: `section ${name}`,
          unit: '',
          dsm: null,
          base: null,
          baseLabel: '',
          target: { kind: 'none' },
          note,
        },
      ];
    }
  };
  const big = o.only.has('large') ? await section('large', () => bigTransfers(o.largeSize, true)) : null;
  const medium = o.only.has('medium')
    ? await section('medium', () => bigTransfers(o.mediumSize, !o.only.has('large')))
    : null;

  let smallRows: Row[] = [];
  if (o.only.has('small'))
    smallRows = await orFailure('small', () =>
      smallRequests(o, {
        client,
        addr,
        agent,
        nginxPort,
        www,
        fsDir,
        storagePid,
        otherPids,
        nginx,
        details,
        references,
      }),
    );

  let gatewayRows: Row[] = [];
  if (withGateway) {
    const gw = cluster.nodes.get(GATEWAY);
    if (!gw?.pid) throw new Error(`no pid for ${GATEWAY}`);
    log(
      `gateway ${gw.host}:${gw.port} (pid ${gw.pid}): ${sizeLabel(o.largeSize)} up/down, ` +
        `${sizeLabel(o.mediumSize)} ranges, ${sizeLabel(o.smallSize)} GETs × ${GATEWAY_CONCURRENCY}, ${GATEWAY_STREAMS} streams`,
    );
    const baseConfig = { ...cluster.spec(GATEWAY).config };
    const configFile = cluster.configFile(GATEWAY);
    const write = (cfg: Record<string, unknown>) =>
      writeFileSync(configFile, `${JSON.stringify(cfg, null, 2)}\n`);
    const reconfigure = async (overrides: Record<string, unknown>): Promise<string | null> => {
      log(`gateway: restarting with ${JSON.stringify(overrides)}`);
      write({ ...baseConfig, ...overrides });
      try {
        await cluster.restart(GATEWAY);
        return null;
      } catch (e) {
        const tail = logTail(cluster.nodes.get(GATEWAY)?.logFile);
        write(baseConfig);
        await cluster.startNode(GATEWAY);
        return `${(e as Error).message.split(' (log:')[0]}${tail ? `: ${tail}` : ''}`;
      }
    };
    gatewayRows = await orFailure('gateway', () =>
      gatewayBench(o, {
        port: gw.port,
        adminPort,
        pids: () => {
          const pid = cluster.nodes.get(GATEWAY)?.pid;
          return pid ? treePids(pid) : [];
        },
        reconfigure,
        storagePid,
        client,
        addr,
        nginxPort,
        nginx,
        www,
        scratch: o.dir,
        details,
        references,
      }),
    );
  }

  for (const part of [big?.downRow, medium?.downRow, big?.upRow, medium?.upRow]) if (part) rows.push(part);
  rows.push(...smallRows);
  rows.push(...(big?.rssRows ?? []), ...(medium?.rssRows ?? []));
  rows.push({
    name: 'storage RSS idle, after start (MiB)',
    unit: 'MiB',
    dsm: mib(idleRss),
    base: nginxIdleRss ? mib(nginxIdleRss) : null,
    baseLabel: 'nginx worker',
    target: { kind: 'none' },
  });
  rows.push(...gatewayRows);
  machine.loadAvgAtEnd = loadavg().map((x) => Math.round(x * 100) / 100);
  return { machine, rows, details, references, otherLoad };
}

/** The last line of a node's log that says something (why it did not start). */
function logTail(file: string | undefined): string {
  if (!file) return '';
  try {
    const lines = readFileSync(file, 'utf8').trim().split('\n');
    const last = lines[lines.length - 1] ?? '';
    return last.length > 300 ? `${last.slice(0, 297)}...` : last;
  } catch {
    return '';
  }
}

interface SmallCtx {
  client: DsmClient;
  addr: Address;
  agent: Agent;
  nginxPort: number;
  www: string;
  fsDir: string;
  storagePid: number;
  /** The id server and tracker (CPU they spend per upload). */
  otherPids: number[];
  nginx: PrivateNginx;
  details: Detail[];
  references: Reference[];
}

/** Small uploads and downloads at a fixed concurrency, each for a bounded time. */
async function smallRequests(o: BenchOptions, c: SmallCtx): Promise<Row[]> {
  const { log } = o;
  const size = o.smallSize;
  const label = sizeLabel(size);
  const payload = patternBlock().subarray(0, size);
  const source = patternSource(size);
  const warmMs = Math.min(1000, o.loopMs / 4);
  const ids: Ids[] = [];
  const FILES = 64;

  const dsmUp = async () => {
    const id: Ids = { appId: APP_ID, userId: 'bench-small', fileId: newFileId() };
    const stat = await c.client.storage.uploadExt(c.addr, id, CONTENT_TYPE, source);
    if (stat.size !== size) throw new Error(`dsm small upload stored ${stat.size} bytes`);
    if (ids.length < FILES) ids.push(id);
  };
  let k = 0;
  const fsUp = async () => {
    const fh = await open(join(c.fsDir, `small-${k++}`), 'w');
    try {
      await fh.write(payload);
      await fh.sync();
    } finally {
      await fh.close();
    }
  };
  for (let i = 0; i < FILES; i++) writeFileSync(join(c.www, 'small', `${i}.bin`), payload);
  const dsmDown = async (i: number) => {
    const r = await c.client.storage.download(c.addr, {
      ...(ids[i % ids.length] as Ids),
      offset: 0,
      size: 0,
    });
    let n = 0;
    for await (const chunk of r.stream) n += chunk.length;
    if (n !== size) throw new Error(`dsm small download returned ${n} bytes`);
  };
  const ngxDown = async (i: number) => {
    const n = await httpGet(c.agent, c.nginxPort, `/small/${i % FILES}.bin`);
    if (n !== size) throw new Error(`nginx small download returned ${n} bytes`);
  };

  /** Warm-up, then `loopReps` timed loops; CPU of `pids` (server) and of the other nodes. */
  const measure = async (name: string, pids: number[], op: (i: number) => Promise<void>) => {
    await loop(o.concurrency, warmMs, o.maxOps, op);
    const rates: number[] = [];
    const server = { user: 0, sys: 0 };
    const others = { user: 0, sys: 0 };
    const client = { user: 0, sys: 0 };
    let ops = 0;
    let ms = 0;
    const latencies: number[] = [];
    for (let r = 0; r < o.loopReps; r++) {
      log(`${name} #${r + 1} (${o.loopMs} ms, concurrency ${o.concurrency})`);
      const o0 = cpuSplitOf(c.otherPids);
      const m = await cpuDuring(pids, () => loop(o.concurrency, o.loopMs, o.maxOps, op));
      const o1 = cpuSplitOf(c.otherPids);
      for (const [acc, d] of [
        [server, m.server],
        [client, m.client],
        [others, { user: o1.user - o0.user, sys: o1.sys - o0.sys }],
      ] as const) {
        acc.user += d.user;
        acc.sys += d.sys;
      }
      ops += m.result.ops;
      ms += m.result.ms;
      rates.push(m.result.ops / (m.result.ms / 1000));
      for (const x of m.result.latencies) latencies.push(x);
    }
    const latency: Latency | undefined = latencyOf(latencies);
    return {
      rate: rates.reduce((a, b) => a + b, 0) / rates.length,
      rates,
      server,
      others,
      client,
      ops,
      ms,
      latency,
    };
  };
  type Measured = Awaited<ReturnType<typeof measure>>;
  const perOp = (m: Measured, t: CpuTimes) => cpuText(t, 1e6 / Math.max(1, m.ops), 'µs', 0);

  const up = await measure(`${label} uploads: dsm`, [c.storagePid], dsmUp);
  const upBase = await measure(`${label} uploads: fs + fsync`, [], fsUp);
  const down = await measure(`${label} downloads: dsm`, [c.storagePid], dsmDown);
  const downBase = await measure(`${label} downloads: nginx`, c.nginx.workerPids(), ngxDown);
  const show = (xs: number[]) => xs.map((x) => x.toFixed(0)).join(', ');
  const conc = `${o.concurrency} connections`;
  const cores = (m: Measured, t: CpuTimes) => ((t.user + t.sys) / (m.ms / 1000)).toFixed(2);
  const us = (m: Measured, t: CpuTimes) => ((t.user + t.sys) * 1e6) / Math.max(1, m.ops);
  c.references.push(
    {
      work: `${label} upload`,
      server: 'storage (storage protocol)',
      client: `DsmClient (Node), ${conc}`,
      value: up.rate,
      unit: '/s',
      latency: up.latency,
      cpu: `${perOp(up, up.server)} per upload`,
    },
    {
      work: `${label} write + fsync`,
      server: '(this process: fs)',
      client: `${conc}`,
      value: upBase.rate,
      unit: '/s',
      latency: upBase.latency,
      cpu: `${perOp(upBase, upBase.client)} per file`,
    },
    {
      work: `${label} download`,
      server: 'storage (storage protocol)',
      client: `DsmClient (Node), ${conc}`,
      value: down.rate,
      unit: '/s',
      latency: down.latency,
      cpu: `${perOp(down, down.server)} per request`,
    },
    {
      work: `${label} GET`,
      server: 'nginx',
      client: `Node's http client, ${conc}`,
      value: downBase.rate,
      unit: '/s',
      latency: downBase.latency,
      cpu: `${perOp(downBase, downBase.server)} per request`,
    },
  );
  c.details.push(
    {
      name: `${label} uploads`,
      text:
        `runs/s dsm [${show(up.rates)}] fs+fsync [${show(upBase.rates)}]; CPU per upload: ` +
        `storage ${perOp(up, up.server)}, id+tracker ${perOp(up, up.others)}, client ${perOp(up, up.client)}; ` +
        `fs+fsync baseline ${perOp(upBase, upBase.client)}`,
    },
    {
      name: `${label} downloads`,
      text:
        `runs/s dsm [${show(down.rates)}] nginx [${show(downBase.rates)}]; CPU per request: ` +
        `storage ${perOp(down, down.server)}, client ${perOp(down, down.client)}; ` +
        `nginx ${perOp(downBase, downBase.server)}, client ${perOp(downBase, downBase.client)}`,
    },
  );
  return [
    {
      name: `${label} uploads/s over the storage protocol, ${conc}`,
      unit: '/s',
      dsm: up.rate,
      base: upBase.rate,
      baseLabel: 'fs write+fsync',
      target: { kind: 'min', value: 2000 },
      dsmLatency: up.latency,
      baseLatency: upBase.latency,
      dsmRuns: up.rates,
      baseRuns: upBase.rates,
      note: "the seed's C++ storage (1,667-1,982/s in the issue, no fsync) is not on this machine",
    },
    {
      name: `storage CPU per ${label} upload (µs)`,
      unit: 'µs',
      dsm: us(up, up.server),
      base: us(upBase, upBase.client),
      baseLabel: 'fs write+fsync',
      target: { kind: 'none' },
      note:
        `user ${us(up, { user: up.server.user, sys: 0 }).toFixed(0)}, sys ${us(up, { user: 0, sys: up.server.sys }).toFixed(0)}; ` +
        `id server + tracker ${us(up, up.others).toFixed(0)} µs; the storage process used ${cores(up, up.server)} cores while uploading`,
    },
    {
      name: `${label} downloads/s over the storage protocol, ${conc}`,
      unit: '/s',
      dsm: down.rate,
      base: downBase.rate,
      baseLabel: 'nginx, Node client',
      target: { kind: 'min', value: 3000 },
      dsmLatency: down.latency,
      baseLatency: downBase.latency,
      dsmRuns: down.rates,
      baseRuns: downBase.rates,
    },
  ];
}

/** The storage the tracker hands out for the bench user (waits until it is active). */
async function locate(client: DsmClient, timeoutMs: number): Promise<Address> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const r = await client.locate(APP_ID, 'bench-big', true);
      const a = r.addrs[0];
      if (a) return { host: a.host, port: a.port };
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`no active storage within ${timeoutMs} ms: ${(last as Error)?.message ?? 'none'}`);
}
