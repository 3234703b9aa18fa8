import { type ChildProcess, spawn } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, realpathSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { nodeFlagsFor } from '@dsm/common';

/**
 * The program every node process runs (`node <entry> <role> --config FILE`): `DSM_ENTRY` (the
 * bundle of `npm run build` sets it to itself), else `options.entry` (`dsm up` passes its own
 * cli/bin/dsm.js), else the `dsm` command installed in the workspace (`node_modules/.bin/dsm`,
 * looked for from this package's folder upwards, as `npx dsm` finds it).
 *
 * Why not `import '@dsm/cli'`: the CLI depends on this package, and the gateway's tests use it
 * while the CLI depends on the gateway. The launcher runs `dsm` as a program, the way a test runs
 * `curl`; it never loads the CLI's code, so no package dependency (and no cycle) is needed.
 */
export function dsmEntry(opts: { entry?: string; env?: Record<string, string> } = {}): string {
  const fromEnv = opts.env?.DSM_ENTRY ?? process.env.DSM_ENTRY;
  if (fromEnv) return resolve(fromEnv);
  if (opts.entry) return resolve(opts.entry);
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const bin = join(dir, 'node_modules', '.bin', 'dsm');
    if (existsSync(bin)) return realpathSync(bin);
    const up = dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  throw new Error(
    'no dsm command found (node_modules/.bin/dsm above the launcher): run `npm install`, or set DSM_ENTRY to cli/bin/dsm.js or the bundle',
  );
}

export type Role = 'tracker' | 'id' | 'storage' | 'gateway';

export interface ClusterOptions {
  /** Folder for configs, logs, SQLite files and the group data folders. */
  dir: string;
  host?: string;
  trackers?: number;
  ids?: number;
  /** Group names, each with `storagesPerGroup` members sharing one data folder. */
  groups?: string[];
  storagesPerGroup?: number;
  /** HTTP gateways in front of the cluster (`dsm up` starts one on 8080; tests choose). */
  gateways?: number;
  /**
   * Processes per gateway (`workers` in its config): a number, or "auto" for the gateway's own
   * default (one per core; `dsm up` uses it). Unset: 1, the single-process gateway (tests that
   * count per-process state stay exact; the multi-process tests ask for more).
   */
  gatewayWorkers?: number | 'auto';
  /**
   * The one port scheme: when set, the nodes take consecutive ports from here, trackers first,
   * then id servers, storages and gateways (`portCount` says how many; tests pass a free range).
   * Without it, the fixed bases of `dsm up`: trackers 21000…, id servers 22000…, storages 23000…,
   * gateways 8080…. A role's own base below overrides either.
   */
  basePort?: number;
  gatewayBasePort?: number;
  trackerBasePort?: number;
  idBasePort?: number;
  storageBasePort?: number;
  /** Database URLs; default: SQLite files in `dir`. MySQL example: mysql://root@127.0.0.1:3306/tnv_trackerdb */
  databases?: Partial<Record<Role, string>>;
  /** Cache URL for trackers and storages; default in-process ("memory:"). */
  cache?: string;
  appIds?: string[];
  beatIntervalMs?: number;
  beatTimeoutMs?: number;
  idStep?: number;
  joinSecret?: string;
  /**
   * Every node and gateway gets an admin listener (`/metrics`, `/healthz`, `/readyz`) on its
   * port + this (`dsm up`: 10000, so trackers 31000…, id servers 32000…, storages 33000…,
   * gateways 18080…). Unset: none (tests ask for one through `extra`).
   */
  adminPortOffset?: number;
  /** Extra config keys per role, merged last. */
  extra?: Partial<Record<Role, Record<string, unknown>>>;
  /** The program each node runs (see `dsmEntry`); `DSM_ENTRY` wins over it. */
  entry?: string;
  /** Environment for the node processes (e.g. DSM_LOG_LEVEL). */
  env?: Record<string, string>;
  /** Called with each node's ready line. */
  onReady?: (node: NodeHandle) => void;
}

export interface NodeHandle {
  name: string;
  role: Role;
  host: string;
  port: number;
  group?: string;
  configFile: string;
  logFile: string;
  pid: number | undefined;
  ready: Record<string, unknown>;
}

export interface Running extends NodeHandle {
  child: ChildProcess | null;
  exited: Promise<number | null>;
}

export interface NodeSpec {
  name: string;
  role: Role;
  port: number;
  group?: string;
  config: Record<string, unknown>;
}

type Counts = Pick<ClusterOptions, 'trackers' | 'ids' | 'groups' | 'storagesPerGroup' | 'gateways'>;

function counts(o: Counts) {
  const groups = o.groups ?? ['group001', 'group002'];
  const perGroup = o.storagesPerGroup ?? 2;
  return {
    trackers: o.trackers ?? 2,
    ids: o.ids ?? 1,
    groups,
    perGroup,
    storages: groups.length * perGroup,
    gateways: o.gateways ?? 0,
  };
}

/** How many ports a cluster of these options listens on (one per node). */
export function portCount(o: Counts): number {
  const c = counts(o);
  return c.trackers + c.ids + c.storages + c.gateways;
}

/** The first port of each role (see `ClusterOptions.basePort`). */
export function portBases(o: ClusterOptions): Record<Role, number> {
  const c = counts(o);
  const b = o.basePort;
  return {
    tracker: o.trackerBasePort ?? (b === undefined ? 21000 : b),
    id: o.idBasePort ?? (b === undefined ? 22000 : b + c.trackers),
    storage: o.storageBasePort ?? (b === undefined ? 23000 : b + c.trackers + c.ids),
    gateway: o.gatewayBasePort ?? (b === undefined ? 8080 : b + c.trackers + c.ids + c.storages),
  };
}

/** What `dsm up` would start, without starting it (configs written by start()). */
export function planCluster(o: ClusterOptions): NodeSpec[] {
  const dir = resolve(o.dir);
  const host = o.host ?? '127.0.0.1';
  const { trackers: nTrackers, ids: nIds, groups, perGroup, gateways: nGateways } = counts(o);
  const bases = portBases(o);
  const tBase = bases.tracker;
  const iBase = bases.id;
  const sBase = bases.storage;
  const db = (role: Role, file: string) => o.databases?.[role] ?? `sqlite:${join(dir, file)}`;
  const cache = o.cache ?? 'memory:';
  const trackers = Array.from({ length: nTrackers }, (_, i) => `${host}:${tBase + i}`);
  const admin = (port: number) =>
    o.adminPortOffset === undefined ? {} : { admin: { listen: `${host}:${port + o.adminPortOffset}` } };
  const ids = Array.from({ length: nIds }, (_, i) => `${host}:${iBase + i}`);
  const specs: NodeSpec[] = [];
  for (let i = 0; i < nIds; i++) {
    specs.push({
      name: `id${i + 1}`,
      role: 'id',
      port: iBase + i,
      config: {
        listen: ids[i],
        ...admin(iBase + i),
        database: db('id', 'id.db'),
        // our storages' `<group>:<index>` keys, and the seed storage's default store path, so
        // that seed storages (and the seed vectors) work against a local cluster
        keyPatterns: ['[A-Za-z0-9]{1,16}:[0-9]{1,4}', '\\.\\./data'],
        ...(o.idStep ? { step: o.idStep } : {}),
        ...o.extra?.id,
      },
    });
  }
  for (let i = 0; i < nTrackers; i++) {
    specs.push({
      name: `tracker${i + 1}`,
      role: 'tracker',
      port: tBase + i,
      config: {
        listen: trackers[i],
        ...admin(tBase + i),
        database: db('tracker', 'tracker.db'),
        cache,
        ...(o.appIds ? { appIds: o.appIds } : {}),
        ...(o.beatTimeoutMs ? { beatTimeoutMs: o.beatTimeoutMs } : {}),
        ...(o.joinSecret ? { joinSecret: o.joinSecret } : {}),
        ...o.extra?.tracker,
      },
    });
  }
  let port = sBase;
  for (const g of groups) {
    for (let m = 0; m < perGroup; m++) {
      specs.push({
        name: `${g}-s${m + 1}`,
        role: 'storage',
        port,
        group: g,
        config: {
          listen: `${host}:${port}`,
          ...admin(port),
          group: g,
          // members of a group share one folder: the GlusterFS volume in production; a group of
          // one has its folder to itself (upload claims in memory, see storesShared)
          storePaths: [join(dir, 'data', g)],
          storesShared: perGroup > 1,
          trackers,
          idServers: ids,
          database: db('storage', 'storage.db'),
          cache,
          ...(o.beatIntervalMs ? { beatIntervalMs: o.beatIntervalMs } : {}),
          ...(o.joinSecret ? { joinSecret: o.joinSecret } : {}),
          ...o.extra?.storage,
        },
      });
      port++;
    }
  }
  const gBase = bases.gateway;
  // the status page of the gateways' admin listeners: the id servers to PING and every node's
  // admin listener (VIP holders), when the nodes have one
  const nodeAdmins =
    o.adminPortOffset === undefined
      ? []
      : specs.map((n) => `http://${host}:${n.port + (o.adminPortOffset as number)}`);
  for (let i = 0; i < nGateways; i++) {
    specs.push({
      name: `gateway${i + 1}`,
      role: 'gateway',
      port: gBase + i,
      config: {
        listen: `${host}:${gBase + i}`,
        ...(o.adminPortOffset === undefined
          ? {}
          : { admin: { listen: `${host}:${gBase + i + o.adminPortOffset}`, idServers: ids, nodeAdmins } }),
        trackers,
        cache,
        ...(o.gatewayWorkers === 'auto' ? {} : { workers: o.gatewayWorkers ?? 1 }),
        ...o.extra?.gateway,
      },
    });
  }
  return specs;
}

/**
 * A local cluster of real node processes — the one code path behind `dsm up` and the
 * whole-cluster tests. Stops exactly the processes it started.
 */
export class Cluster {
  readonly dir: string;
  readonly specs: NodeSpec[];
  readonly nodes = new Map<string, Running>();
  readonly #opts: ClusterOptions;

  private constructor(opts: ClusterOptions) {
    this.#opts = opts;
    this.dir = resolve(opts.dir);
    this.specs = planCluster(opts);
  }

  static async start(opts: ClusterOptions): Promise<Cluster> {
    const c = new Cluster(opts);
    mkdirSync(join(c.dir, 'config'), { recursive: true });
    mkdirSync(join(c.dir, 'logs'), { recursive: true });
    for (const s of c.specs) {
      writeFileSync(c.configFile(s.name), `${JSON.stringify(s.config, null, 2)}\n`);
    }
    try {
      // id servers first (storages need them), then trackers, then storages
      for (const role of ['id', 'tracker', 'storage', 'gateway'] as const) {
        await Promise.all(c.specs.filter((s) => s.role === role).map((s) => c.startNode(s.name)));
      }
    } catch (e) {
      await c.stop();
      throw e;
    }
    writeFileSync(
      join(c.dir, 'cluster.json'),
      `${JSON.stringify({ trackers: c.addresses('tracker'), ids: c.addresses('id'), gateways: c.addresses('gateway'), dir: c.dir }, null, 2)}\n`,
    );
    return c;
  }

  configFile(name: string): string {
    return join(this.dir, 'config', `${name}.json`);
  }

  addresses(role: Role): string[] {
    return this.specs.filter((s) => s.role === role).map((s) => String(s.config.listen));
  }

  spec(name: string): NodeSpec {
    const s = this.specs.find((x) => x.name === name);
    if (!s) throw new Error(`no node named ${name}`);
    return s;
  }

  /** Starts (or restarts) one node and waits for its ready line. */
  async startNode(name: string, timeoutMs = 30_000): Promise<NodeHandle> {
    const s = this.spec(name);
    const logFile = join(this.dir, 'logs', `${name}.log`);
    const log = createWriteStream(logFile, { flags: 'a' });
    const child = spawn(
      process.execPath,
      // V8 flags of every node process (@dsm/common nodeFlagsFor: the young generation's size)
      [...nodeFlagsFor(s.role), dsmEntry(this.#opts), s.role, '--config', this.configFile(name)],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, ...this.#opts.env, DSM_PARENT_PID: String(process.pid) },
      },
    );
    child.stderr?.pipe(log);
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    const [host, port] = String(s.config.listen).split(':') as [string, string];
    const ready = await new Promise<Record<string, unknown>>((resolveReady, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`${name} did not become ready within ${timeoutMs} ms (log: ${logFile})`));
      }, timeoutMs);
      const rl = createInterface({ input: child.stdout! });
      rl.on('line', (line) => {
        try {
          const msg = JSON.parse(line) as Record<string, unknown>;
          if (msg.ready) {
            clearTimeout(timer);
            resolveReady(msg);
          }
        } catch {
          log.write(`${line}\n`);
        }
      });
      void exited.then((code) => {
        clearTimeout(timer);
        reject(new Error(`${name} exited with code ${code} before it was ready (log: ${logFile})`));
      });
    });
    const handle: Running = {
      name,
      role: s.role,
      host,
      port: Number(port),
      group: s.group,
      configFile: this.configFile(name),
      logFile,
      pid: child.pid,
      ready,
      child,
      exited,
    };
    this.nodes.set(name, handle);
    this.#opts.onReady?.(handle);
    return handle;
  }

  /** SIGKILL, as a crash would (tests of crash safety). */
  async kill(name: string): Promise<void> {
    const n = this.nodes.get(name);
    if (!n?.child) return;
    n.child.kill('SIGKILL');
    await n.exited;
    n.child = null;
  }

  /** SIGTERM and wait for a clean exit. */
  async stopNode(name: string, timeoutMs = 15_000): Promise<void> {
    const n = this.nodes.get(name);
    if (!n?.child) return;
    const child = n.child;
    child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    await n.exited;
    clearTimeout(t);
    n.child = null;
  }

  async restart(name: string): Promise<NodeHandle> {
    await this.stopNode(name);
    return this.startNode(name);
  }

  /** Stops storages first (they leave the trackers), then trackers and id servers. */
  async stop(): Promise<void> {
    for (const role of ['gateway', 'storage', 'tracker', 'id'] as const) {
      await Promise.all(
        [...this.nodes.values()].filter((n) => n.role === role).map((n) => this.stopNode(n.name)),
      );
    }
  }
}
