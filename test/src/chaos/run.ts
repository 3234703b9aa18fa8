import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { DsmClient, newFileId } from '@dsm/client';
import { nodeTransport } from '@dsm/client/node';
import { Cluster, portCount } from '@dsm/cluster';
import { ErrorCode, isDsmError } from '@dsm/common/errors';
import type { FileIds } from '@dsm/packets';
import { Errno, parseAddress } from '@dsm/packets';
import { type BackendName, freePortRange, mariadbBackend } from '@dsm/testkit';
import { classifyMismatch, fileBytes, sha256Hex } from './content.ts';
import {
  checkHistory,
  type FileRecord,
  longestOutage,
  type Op,
  type OpKind,
  type Outage,
  type Violation,
} from './history.ts';

export interface ChaosOptions {
  /** Length of the chaos window (workers and the kill scheduler both run during it). */
  seconds: number;
  /** Concurrent client workers. */
  workers?: number;
  backend?: BackendName;
  /** Pause between the end of one kill/restart cycle and the next kill, ms (random in range). */
  killGapMs?: [number, number];
  /** How long a killed node stays down before it is restarted, ms (random in range). */
  downMs?: [number, number];
  minSize?: number;
  maxSize?: number;
  /** Seed of the file contents (default: random). */
  seed?: number;
  /** Progress lines. */
  log?: (line: string) => void;
  /** Write the history (one JSON op per line) here. */
  historyFile?: string;
  /** On a violation, copy the node logs here before the cluster's folder is removed. */
  keepLogsDir?: string;
}

export interface KillEvent {
  node: string;
  role: string;
  killedAt: number;
  restartedAt: number;
  readyAt: number;
  /** Every storage ACTIVE on every tracker again. */
  healthyAt: number;
}

export interface KindStats {
  total: number;
  ok: number;
  notFound: number;
  failed: number;
  failuresByCode: Record<string, number>;
}

export interface ChaosResult {
  backend: BackendName;
  workers: number;
  seconds: number;
  windowMs: number;
  startupMs: number;
  kinds: Record<OpKind, KindStats>;
  outages: Outage[];
  kills: KillEvent[];
  acked: number;
  ackedDeleted: number;
  verified: number;
  unackedPresent: number;
  bytesUp: number;
  bytesDown: number;
  slowestOpMs: number;
  violations: Violation[];
  report: string;
}

const APP = 'tnvideo';
const USERS = 64;

/** Node start-up under a loaded machine (tsx compiles the sources) can take a while. */
const START_TIMEOUT_MS = 90_000;
/** An operation still running this long after the chaos window ended is a hang. */
const HANG_MS = 60_000;

interface ChaosCluster {
  cluster: Cluster;
  dir: string;
  stop(): Promise<void>;
}

/**
 * 2 trackers, 2 id servers, 2 groups of 2 storages sharing a group data folder (as `dsm up`),
 * on fresh MariaDB databases + a fresh Redis key prefix, or on SQLite files. Everything is
 * removed by stop(), and on a failed start.
 */
async function startChaosCluster(backend: BackendName): Promise<ChaosCluster> {
  const dir = mkdtempSync(join(tmpdir(), 'dsm-chaos-'));
  const store = backend === 'mariadb+redis' ? mariadbBackend() : undefined;
  let cluster: Cluster | undefined;
  const stop = async () => {
    try {
      await cluster?.stop();
    } finally {
      await store?.cleanup();
      rmSync(dir, { recursive: true, force: true });
    }
  };
  try {
    await store?.setup();
    const databases = store
      ? { tracker: store.database('tracker'), storage: store.database('storage'), id: store.database('id') }
      : undefined;
    const shape = { trackers: 2, ids: 2, groups: ['group001', 'group002'], storagesPerGroup: 2 };
    cluster = await Cluster.start({
      dir,
      ...shape,
      basePort: await freePortRange(portCount(shape)),
      beatIntervalMs: 300,
      beatTimeoutMs: 1500,
      databases,
      cache: store?.cacheUrl(),
      env: { DSM_LOG_LEVEL: process.env.DSM_LOG_LEVEL ?? 'warn' },
    });
  } catch (e) {
    await stop();
    throw e;
  }
  return { cluster, dir, stop };
}

const rand = (lo: number, hi: number) => lo + Math.random() * (hi - lo);
const randInt = (n: number) => Math.floor(Math.random() * n);

/** A set with O(1) random pick and removal. */
class PickSet {
  readonly #items: number[] = [];
  readonly #index = new Map<number, number>();
  get size(): number {
    return this.#items.length;
  }
  add(x: number): void {
    if (this.#index.has(x)) return;
    this.#index.set(x, this.#items.length);
    this.#items.push(x);
  }
  delete(x: number): boolean {
    const i = this.#index.get(x);
    if (i === undefined) return false;
    const last = this.#items.pop() as number;
    if (last !== x) {
      this.#items[i] = last;
      this.#index.set(last, i);
    }
    this.#index.delete(x);
    return true;
  }
  pick(): number | undefined {
    return this.#items.length ? this.#items[randInt(this.#items.length)] : undefined;
  }
}

const ERRNO_NAMES = new Map<number, string>(Object.entries(Errno).map(([name, n]) => [n as number, name]));

function errInfo(e: unknown): Pick<Op, 'code' | 'errno' | 'message'> {
  const x = e as { code?: unknown; errno?: unknown; message?: unknown };
  return {
    code: typeof x?.code === 'string' ? x.code : 'UNKNOWN',
    errno: typeof x?.errno === 'number' ? x.errno : undefined,
    message: String(x?.message ?? e).slice(0, 200),
  };
}

const isNotFound = (e: unknown) => isDsmError(e, ErrorCode.NOT_FOUND);

/**
 * Starts a cluster (2 trackers, 2 id servers, 2 groups of 2 storages sharing a data folder),
 * runs `workers` concurrent clients uploading, downloading and deleting while a scheduler
 * SIGKILLs and restarts one random node at a time, then reads every file back and checks the
 * whole history. Stops everything it started.
 */
export async function runChaos(o: ChaosOptions): Promise<ChaosResult> {
  const workers = o.workers ?? 200;
  const backend = o.backend ?? 'mariadb+redis';
  const killGap = o.killGapMs ?? [1000, 3000];
  const down = o.downMs ?? [200, 2000];
  const minSize = o.minSize ?? 1024;
  const maxSize = o.maxSize ?? 256 * 1024;
  const seed = o.seed ?? randInt(2 ** 31);
  const log = o.log ?? (() => {});

  const t0 = performance.now();
  const now = () => performance.now() - t0;
  log(`starting the cluster on ${backend} (seed ${seed})`);
  // Cluster.start waits 30 s per node; a machine busy with other work may need more tries.
  const t = await (async () => {
    for (let attempt = 1; ; attempt++) {
      try {
        return await startChaosCluster(backend);
      } catch (e) {
        if (attempt >= 3) throw e;
        log(`cluster start failed (${(e as Error).message}); trying again`);
      }
    }
  })();
  const startupMs = now();
  log(`cluster up after ${(startupMs / 1000).toFixed(1)} s`);
  const client = new DsmClient({
    trackers: t.cluster.addresses('tracker').map(parseAddress),
    transport: nodeTransport,
    locateCacheMs: 1000,
    ioTimeoutMs: 10_000,
    connectTimeoutMs: 3000,
    acquireTimeoutMs: 10_000,
    maxPerAddress: 32,
    maxQueue: 1024,
  });

  const files = new Map<number, FileRecord & { ids: FileIds }>();
  const ops: Op[] = [];
  const kills: KillEvent[] = [];
  const live = new PickSet(); // acknowledged, no delete attempted
  const deleted = new PickSet(); // delete confirmed
  let nextFile = 0;
  let seq = 0;
  let bytesUp = 0;
  let bytesDown = 0;
  let violations: Violation[] = [];
  let windowStart = 0;
  let windowEnd = 0;

  /** The operation each worker is in (for the hang report). */
  const inFlight = new Map<number, { kind: OpKind; file: number; start: number }>();
  const record = (op: Omit<Op, 'seq'>): Op => {
    const full = { seq: seq++, ...op };
    ops.push(full);
    inFlight.delete(op.worker);
    return full;
  };
  type Outcome = Omit<Op, 'seq' | 'worker' | 'kind' | 'file' | 'start' | 'end'>;
  /** Starts an operation; the function it returns records its outcome (ending it now). */
  const begin = (worker: number, kind: OpKind, file: number): ((o: Outcome) => Op) => {
    const start = now();
    if (worker >= 0) inFlight.set(worker, { kind, file, start });
    return (o) => record({ worker, kind, file, start, end: now(), ...o });
  };

  async function upload(worker: number): Promise<void> {
    const n = nextFile++;
    const size = minSize + randInt(maxSize - minSize + 1);
    const bytes = fileBytes(seed, n, size);
    const ids: FileIds = { appId: APP, userId: `cu${randInt(USERS)}`, fileId: newFileId() };
    const sha = sha256Hex(bytes);
    // recorded before the upload: one that fails may still have been stored (checked at the end)
    files.set(n, { n, size, sha256: sha, ids });
    const done = begin(worker, 'upload', n);
    try {
      const r = await client.upload({
        appId: ids.appId,
        userId: ids.userId,
        fileId: ids.fileId,
        freshFileId: true,
        source: {
          size,
          async *open() {
            for (let off = 0; off < size; off += 64 * 1024) yield bytes.subarray(off, off + 64 * 1024);
          },
        },
      });
      done({ outcome: 'ok', sha256: Buffer.from(r.stat.sha256).toString('hex'), bytes: size });
      bytesUp += size;
      live.add(n);
    } catch (e) {
      done({ outcome: 'error', ...errInfo(e) });
    }
  }

  async function read(worker: number, kind: 'download' | 'verify', n: number): Promise<Op> {
    const f = files.get(n) as FileRecord & { ids: FileIds };
    const done = begin(worker, kind, n);
    try {
      const r = await client.download(f.ids);
      const parts: Buffer[] = [];
      for await (const c of r.stream) parts.push(Buffer.from(c));
      const got = Buffer.concat(parts);
      const sha = sha256Hex(got);
      bytesDown += got.length;
      return done({
        outcome: 'ok',
        sha256: sha,
        bytes: got.length,
        ...(sha !== f.sha256 ? { mismatch: classifyMismatch(got, n) } : {}),
      });
    } catch (e) {
      return done({ outcome: isNotFound(e) ? 'not-found' : 'error', ...errInfo(e) });
    }
  }

  async function remove(worker: number, n: number): Promise<void> {
    const f = files.get(n) as FileRecord & { ids: FileIds };
    live.delete(n);
    const done = begin(worker, 'delete', n);
    try {
      await client.delete(f.ids);
      done({ outcome: 'ok' });
      deleted.add(n);
    } catch (e) {
      const nf = isNotFound(e);
      done({ outcome: nf ? 'not-found' : 'error', ...errInfo(e) });
      // not-found: an earlier attempt inside the client's failover removed it
      if (nf) deleted.add(n);
    }
  }

  async function worker(w: number, until: number): Promise<void> {
    while (now() < until) {
      const r = Math.random();
      if (live.size < 50 || r < 0.45) {
        await upload(w);
      } else if (r < 0.9) {
        const pickDeleted = deleted.size > 0 && Math.random() < 0.1;
        const n = pickDeleted ? deleted.pick() : live.pick();
        if (n !== undefined) await read(w, 'download', n);
      } else {
        const n = live.pick();
        if (n !== undefined) await remove(w, n);
      }
    }
  }

  const trackers = t.cluster.addresses('tracker').map(parseAddress);
  const storageCount = t.cluster.specs.filter((s) => s.role === 'storage').length;
  /** Every storage ACTIVE on every tracker. */
  async function healthy(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      try {
        const st = await Promise.all(trackers.map((a) => client.tracker.status(a)));
        const ok = st.every(
          (s) =>
            s.groups.flatMap((g) => g.storages).filter((x) => x.state === 'ACTIVE').length >= storageCount,
        );
        if (ok) return true;
      } catch {
        // a tracker still starting
      }
      await sleep(50);
    }
    return false;
  }

  async function scheduler(until: number): Promise<void> {
    // Roles in turn (storages twice as often), a random node of the role: a short run still
    // kills each kind. One node down at a time: never both members of a group, both trackers
    // or both id servers.
    const turns = ['storage', 'tracker', 'storage', 'id'] as const;
    let turn = randInt(turns.length);
    await sleep(rand(500, 1000));
    while (now() < until) {
      const role = turns[turn++ % turns.length] as string;
      const names = t.cluster.specs.filter((s) => s.role === role).map((s) => s.name);
      const node = names[randInt(names.length)] as string;
      const killedAt = now();
      await t.cluster.kill(node);
      await sleep(rand(down[0], down[1]));
      const restartedAt = now();
      await t.cluster.startNode(node, START_TIMEOUT_MS);
      const readyAt = now();
      if (!(await healthy(30_000))) throw new Error(`cluster not healthy 30 s after restarting ${node}`);
      const healthyAt = now();
      kills.push({ node, role, killedAt, restartedAt, readyAt, healthyAt });
      log(
        `[${(killedAt / 1000).toFixed(1)} s] killed ${node}, restarted after ${(restartedAt - killedAt).toFixed(0)} ms, ready +${(readyAt - restartedAt).toFixed(0)} ms, healthy +${(healthyAt - readyAt).toFixed(0)} ms`,
      );
      const gap = rand(killGap[0], killGap[1]);
      if (now() + gap >= until) break;
      await sleep(gap);
    }
  }

  let slowestOpMs = 0;
  let unackedPresent = 0;
  let verified = 0;
  try {
    if (!(await healthy(60_000))) throw new Error('the storages did not all become ACTIVE');
    const started = now();
    windowStart = started;
    const until = started + o.seconds * 1000;
    log(`chaos: ${workers} workers for ${o.seconds} s`);
    const progress = setInterval(() => {
      const done = ops.length;
      const failed = ops.filter((x) => x.outcome === 'error').length;
      log(
        `[${(now() / 1000).toFixed(1)} s] ops ${done}, client-visible failures ${failed}, files ${nextFile}`,
      );
    }, 10_000);
    const sched = scheduler(until);
    try {
      // A worker still in one operation a minute after the window is a hang: reported, not waited for.
      let settled = false;
      const all = Promise.all(Array.from({ length: workers }, (_, w) => worker(w, until))).finally(() => {
        settled = true;
      });
      while (!settled) {
        await Promise.race([all, sleep(1000)]);
        if (!settled && now() > until + HANG_MS) {
          const stuck = [...inFlight.values()]
            .slice(0, 10)
            .map((x) => `${x.kind} of file ${x.file} since ${(x.start / 1000).toFixed(1)} s`);
          throw new Error(`hang: ${inFlight.size} operations still running: ${stuck.join('; ')}`);
        }
      }
    } finally {
      clearInterval(progress);
    }
    windowEnd = now();
    await sched;
    if (!(await healthy(30_000))) throw new Error('cluster not healthy after the chaos window');

    // Final verification: every file ever written (acknowledged or not), all nodes up.
    log(`verifying ${files.size} files`);
    const todo = [...files.keys()];
    const verifyOne = async (n: number): Promise<void> => {
      for (let attempt = 0; attempt < 3; attempt++) {
        const r = await read(-1, 'verify', n);
        if (r.outcome !== 'error') return;
        await sleep(500);
      }
    };
    await Promise.all(
      Array.from({ length: 32 }, async () => {
        for (let n = todo.pop(); n !== undefined; n = todo.pop()) await verifyOne(n);
      }),
    );
    slowestOpMs = Math.max(0, ...ops.map((x) => x.end - x.start));
    violations = checkHistory(files, ops);
    const verifyOk = new Set(ops.filter((x) => x.kind === 'verify' && x.outcome === 'ok').map((x) => x.file));
    const uploadOk = new Set(ops.filter((x) => x.kind === 'upload' && x.outcome === 'ok').map((x) => x.file));
    verified = [...verifyOk].filter((n) => uploadOk.has(n)).length;
    unackedPresent = [...verifyOk].filter((n) => !uploadOk.has(n)).length;
    if (o.historyFile) writeFileSync(o.historyFile, `${ops.map((x) => JSON.stringify(x)).join('\n')}\n`);
    if (violations.length > 0 && o.keepLogsDir) {
      mkdirSync(o.keepLogsDir, { recursive: true });
      cpSync(join(t.dir, 'logs'), o.keepLogsDir, { recursive: true });
    }
  } finally {
    await client.close();
    await t.stop();
  }

  const kinds = {} as Record<OpKind, KindStats>;
  for (const k of ['upload', 'download', 'delete', 'verify'] as const) {
    const mine = ops.filter((x) => x.kind === k);
    const failuresByCode: Record<string, number> = {};
    for (const x of mine) {
      if (x.outcome !== 'error') continue;
      // an error reply is named by its errno too: DSM_ERR_REMOTE/BUSY, DSM_ERR_REMOTE/ID_UNAVAILABLE
      const key =
        x.code === 'DSM_ERR_REMOTE' && x.errno !== undefined
          ? `${x.code}/${ERRNO_NAMES.get(x.errno) ?? x.errno}`
          : (x.code ?? 'UNKNOWN');
      failuresByCode[key] = (failuresByCode[key] ?? 0) + 1;
    }
    kinds[k] = {
      total: mine.length,
      ok: mine.filter((x) => x.outcome === 'ok').length,
      notFound: mine.filter((x) => x.outcome === 'not-found').length,
      failed: mine.filter((x) => x.outcome === 'error').length,
      failuresByCode,
    };
  }
  const outages = (['upload', 'download', 'delete', 'any'] as const).map((k) =>
    longestOutage(
      ops.filter((x) => x.end <= windowEnd + 15_000),
      k,
      windowStart,
      windowEnd,
    ),
  );
  const acked = kinds.upload.ok;
  const ackedDeleted = new Set(
    ops.filter((x) => x.kind === 'delete' && x.outcome !== 'error').map((x) => x.file),
  ).size;
  const result: ChaosResult = {
    backend,
    workers,
    seconds: o.seconds,
    windowMs: windowEnd - windowStart,
    startupMs,
    kinds,
    outages,
    kills,
    acked,
    ackedDeleted,
    verified,
    unackedPresent,
    bytesUp,
    bytesDown,
    slowestOpMs,
    violations,
    report: '',
  };
  result.report = formatReport(result);
  return result;
}

const MiB = 1024 * 1024;

export function formatReport(r: ChaosResult): string {
  const lines: string[] = [];
  const s = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
  lines.push(
    `chaos run: ${r.workers} workers, ${s(r.windowMs)} of chaos on ${r.backend} (cluster start ${s(r.startupMs)}); ${r.kills.length} kills (SIGKILL + restart)`,
  );
  const byRole: Record<string, number> = {};
  for (const k of r.kills) byRole[k.role] = (byRole[k.role] ?? 0) + 1;
  lines.push(
    `  kills by role: ${Object.entries(byRole)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')}`,
  );
  if (r.kills.length > 0) {
    const rec = r.kills.map((k) => k.healthyAt - k.restartedAt);
    lines.push(
      `  restart → ready and rejoined: median ${s(rec.sort((a, b) => a - b)[Math.floor(rec.length / 2)] as number)}, max ${s(Math.max(...rec))}`,
    );
  }
  lines.push('  operations (ok / not-found / failed by client-visible error):');
  for (const [k, v] of Object.entries(r.kinds)) {
    const codes = Object.entries(v.failuresByCode)
      .sort((a, b) => b[1] - a[1])
      .map(([c, n]) => `${c} ${n}`)
      .join(', ');
    lines.push(
      `    ${k.padEnd(8)} ${String(v.total).padStart(7)} = ${v.ok} ok, ${v.notFound} not-found, ${v.failed} failed${codes ? ` (${codes})` : ''}`,
    );
  }
  const total = r.kinds.upload.total + r.kinds.download.total + r.kinds.delete.total;
  lines.push(
    `  during chaos: ${total} ops (${(total / (r.windowMs / 1000)).toFixed(0)}/s), ${(r.bytesUp / MiB).toFixed(1)} MiB up; ${(r.bytesDown / MiB).toFixed(1)} MiB read incl. verification; slowest op ${s(r.slowestOpMs)}`,
  );
  lines.push('  longest outage (no success and ≥ 1 failure of that kind):');
  for (const o of r.outages) {
    const during = r.kills.filter((k) => k.killedAt <= o.to && k.healthyAt >= o.from).map((k) => k.node);
    lines.push(
      `    ${o.kind.padEnd(8)} ${s(o.ms)}${o.ms > 0 ? ` at ${s(o.from)}..${s(o.to)}, ${o.failures} failures${during.length ? `, during kill of ${during.join(', ')}` : ''}` : ''}`,
    );
  }
  lines.push(
    `  acknowledged uploads ${r.acked}: ${r.ackedDeleted} deleted later, ${r.verified} read back sha-256 equal at the end; ${r.unackedPresent} unacknowledged uploads found stored (byte-equal)`,
  );
  lines.push(`  violations: ${r.violations.length}`);
  for (const v of r.violations.slice(0, 20)) lines.push(`    ${v.kind} file ${v.file}: ${v.detail}`);
  return lines.join('\n');
}
