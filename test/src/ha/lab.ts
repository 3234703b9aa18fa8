/**
 * A dsm cluster across network namespaces, with the real daemons (netns recipe of
 * docs/reliability.md and /work/shared/reference/ha-recipes.md):
 *
 *   t1, t2  keepalived + tracker       tracker VIP 10.213.0.100:21000
 *   i1, i2  keepalived + id server     id VIP      10.213.0.101:22000
 *   s1..s3  glusterd + brick + FUSE mount of the group volume + storage node (group001, replica 3)
 *   c       the clients: a connect proxy the test process talks to through a Unix socket
 *
 * Hosts are namespaces `dsm-<host>` on a bridge in `dsm-sw` (infra/ha/scripts/netns-lab.sh),
 * addresses in 10.213.0.0/24 only, no default route. Storage hosts also get their own mount
 * namespace (private /var/lib/glusterd, /run, and the group volume mounted at the same path
 * on every member, as production storages share one store path). Everything started is
 * recorded by PID; `down()` (also run from a process 'exit' hook) kills exactly that, every
 * process left in the lab's namespaces, the mount namespaces and the network namespaces.
 */
import { type ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import {
  closeSync,
  cpSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { DsmClient, IdClient, Pool } from '@dsm/client';
import { glusterGroupSteps, parseHealInfo, renderVipPair } from '@dsm/ha';
import { Command } from '@dsm/packets';
import { labTransport } from './lab-transport.ts';

const execFileP = promisify(execFile);
export const SCRIPTS = fileURLToPath(new URL('../../../infra/ha/scripts/', import.meta.url));
const DSM_BIN = fileURLToPath(new URL('../../../cli/bin/dsm.js', import.meta.url));
const PATH = `${process.env.PATH ?? ''}:/usr/sbin:/sbin`;
// netns-lab.sh makes namespaces dsm-<host> with 10.213.0.(11 + index) in this order
const LAB_HOSTS = 't1 t2 i1 i2 s1 s2 s3 c';
const ENV = { ...process.env, PATH, DSM_LAB_HOSTS: LAB_HOSTS };
const LOCK = '/run/dsm-halab.lock';
const MNTNS = '/run/dsm-halab-mnt';
const STATE = '/tmp/dsm-halab';
/** Logs of the last run are copied here at teardown. */
export const LAST_LOGS = '/tmp/dsm-halab-last-logs';
const GSYNCD = '/usr/lib/x86_64-linux-gnu/glusterfs/gsyncd';

export const HOSTS = ['t1', 't2', 'i1', 'i2', 's1', 's2', 's3', 'c'] as const;
export type Host = (typeof HOSTS)[number];
export const STORAGE_HOSTS = ['s1', 's2', 's3'] as const;
export type StorageHost = (typeof STORAGE_HOSTS)[number];
export const ipOf = (h: Host) => `10.213.0.${11 + HOSTS.indexOf(h)}`;
export const TRACKER_VIP = '10.213.0.100';
export const ID_VIP = '10.213.0.101';
export const TRACKER_PORT = 21000;
export const ID_PORT = 22000;
export const STORAGE_PORT = 23000;
export const VOLUME = 'group001';
export const BEAT_MS = 500;
export const BEAT_TIMEOUT_MS = 3 * BEAT_MS;
export const SWEEP_MS = 100;
/** keepalived preempt_delay: a recovered master waits this long before taking its VIP back. */
export const PREEMPT_DELAY_MS = 2000;

const ns = (h: Host) => `dsm-${h}`;
const mntFile = (h: Host) => `${MNTNS}/dsm-${h}`;

export async function sh(cmd: string, args: string[], timeoutMs = 60_000): Promise<string> {
  try {
    const { stdout } = await execFileP(cmd, args, { env: ENV, timeout: timeoutMs, maxBuffer: 16 << 20 });
    return stdout;
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')} failed: ${(err.stderr || err.message).trim()}`);
  }
}

function shSync(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, {
      env: ENV,
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 30_000,
    }).toString();
  } catch {
    return '';
  }
}

export function pidAlive(pid: number | undefined): boolean {
  if (!pid) return false;
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '')[0];
    return st !== 'Z' && st !== 'X';
  } catch {
    return false;
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function until<T>(
  what: string,
  timeoutMs: number,
  fn: () => Promise<T | undefined | false> | T | undefined | false,
  stepMs = 100,
): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end)
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${(last as Error).message})` : ''}`,
      );
    await sleep(stepMs);
  }
}

interface NodeProc {
  name: string;
  host: Host;
  role: 'tracker' | 'id' | 'storage';
  configFile: string;
  child: ChildProcess | null;
  pid: number | undefined;
}

/**
 * keepalived.conf of every VIP host of the lab, as `Lab.up` writes and starts them: the tracker
 * pair (VIP 10.213.0.100, router id 51) and the id-server pair (VIP 10.213.0.101, router id 52).
 * Pure (renders only), so the Terraform parity check compares with exactly this.
 */
export function labVipConfs(
  trackFileDir = STATE,
): { hosts: Host[]; confs: { name: string; conf: string }[] }[] {
  return [
    {
      role: 'tracker',
      hosts: ['t1', 't2'] as Host[],
      vip: TRACKER_VIP,
      vrid: 51,
      port: TRACKER_PORT,
      reply: Command.TRACKER_REPLY,
    },
    {
      role: 'id',
      hosts: ['i1', 'i2'] as Host[],
      vip: ID_VIP,
      vrid: 52,
      port: ID_PORT,
      reply: Command.ID_REPLY,
    },
  ].map((p) => ({
    hosts: p.hosts,
    confs: renderVipPair({
      role: p.role,
      vip: `${p.vip}/24`,
      interface: 'eth0',
      virtualRouterId: p.vrid,
      nodes: p.hosts.map((h) => ({ name: h, address: ipOf(h) })),
      checkAddress: `127.0.0.1:${p.port}`,
      replyCommand: p.reply,
      advertIntMs: 100,
      // storages retry a lost tracker every 500 ms here; TCP's retransmission after a cut
      // link comes back can add a second (scenario a')
      preemptDelayMs: PREEMPT_DELAY_MS,
      trackFileDir,
    }),
  }));
}

export class Lab {
  readonly dir = STATE;
  readonly dataPath = join(STATE, 'data', VOLUME);
  readonly nodes = new Map<string, NodeProc>();
  readonly #pids = new Set<number>();
  readonly #children = new Set<ChildProcess>();
  proxySock = join(STATE, 'proxy.sock');
  #down = false;

  /** Client through the tracker VIP only (no locate cache: every call asks the tracker). */
  client(o: { connectTimeoutMs?: number; ioTimeoutMs?: number } = {}): DsmClient {
    return new DsmClient({
      trackers: [{ host: TRACKER_VIP, port: TRACKER_PORT }],
      transport: labTransport(this.proxySock),
      locateCacheMs: 0,
      connectTimeoutMs: o.connectTimeoutMs ?? 300,
      ioTimeoutMs: o.ioTimeoutMs ?? 10_000,
      acquireTimeoutMs: 5000,
    });
  }

  idClient(): { ids: IdClient; pool: Pool } {
    const pool = new Pool({
      transport: labTransport(this.proxySock),
      connectTimeoutMs: 300,
      ioTimeoutMs: 2000,
    });
    return { ids: new IdClient(pool, [{ host: ID_VIP, port: ID_PORT }]), pool };
  }

  static async up(log: (s: string) => void = () => {}): Promise<Lab> {
    await sh(join(SCRIPTS, 'ensure-deps.sh'), ['all']).catch((e) => {
      throw new Error(`HA lab dependencies missing (CI installs them through .ci/run): ${e.message}`);
    });
    takeLock();
    cleanupLeftovers();
    const lab = new Lab();
    process.once('exit', () => lab.downSync());
    const t0 = Date.now();
    try {
      mkdirSync(lab.dataPath, { recursive: true });
      mkdirSync(join(STATE, 'logs'), { recursive: true });
      await sh(join(SCRIPTS, 'netns-lab.sh'), ['up'], 30_000);
      log(`lab network up (${Date.now() - t0} ms)`);
      await lab.#startGluster();
      log(`group volume ${VOLUME} (replica 3) started and mounted on s1..s3 (${Date.now() - t0} ms)`);
      await lab.#startProxy();
      await Promise.all([
        ...(['i1', 'i2'] as const).map((h) => lab.startNode(h)),
        ...(['t1', 't2'] as const).map((h) => lab.startNode(h)),
      ]);
      await Promise.all(
        labVipConfs(STATE).map(async (p) => {
          for (const c of p.confs) {
            const f = join(STATE, `keepalived-${c.name}.conf`);
            writeFileSync(f, c.conf);
            await sh('keepalived', ['-t', '-f', f]);
          }
          for (const h of p.hosts) await lab.startKeepalived(h);
        }),
      );
      await until('tracker VIP on t1', 15_000, () => lab.vipHolders(TRACKER_VIP).join() === 't1');
      await until('id VIP on i1', 15_000, () => lab.vipHolders(ID_VIP).join() === 'i1');
      log(`VIPs held by t1 and i1 (${Date.now() - t0} ms)`);
      await Promise.all(STORAGE_HOSTS.map((h) => lab.startNode(h)));
      await lab.waitStorages(3, 20_000);
      log(`cluster up: 3 storages ACTIVE (${Date.now() - t0} ms)`);
      return lab;
    } catch (e) {
      lab.downSync();
      throw e;
    }
  }

  // ---- processes -------------------------------------------------------------------------

  #spawnDetached(h: Host, argv: string[], logName: string, mountNs = false): ChildProcess {
    const out = openSync(join(STATE, 'logs', logName), 'a');
    const child = spawn(
      'nsenter',
      [`--net=/run/netns/${ns(h)}`, ...(mountNs ? [`--mount=${mntFile(h)}`] : []), '--', ...argv],
      { env: { ...ENV, DSM_PARENT_PID: String(process.pid) }, stdio: ['ignore', out, out], detached: true },
    );
    closeSync(out);
    if (child.pid) this.#pids.add(child.pid);
    this.#children.add(child);
    child.once('exit', () => this.#children.delete(child));
    return child;
  }

  nodeConfig(h: Host): { name: string; role: NodeProc['role']; config: Record<string, unknown> } {
    const role = h.startsWith('t') ? 'tracker' : h.startsWith('i') ? 'id' : 'storage';
    if (role === 'tracker')
      return {
        name: h,
        role,
        config: {
          listen: `0.0.0.0:${TRACKER_PORT}`,
          hostname: h,
          database: `sqlite:${join(STATE, 'tracker.db')}`,
          beatTimeoutMs: BEAT_TIMEOUT_MS,
          sweepIntervalMs: SWEEP_MS,
          // the lab's namespaces are a closed network; production renders auth.required (Terraform)
          auth: { allowUnauthenticated: true },
        },
      };
    if (role === 'id')
      return {
        name: h,
        role,
        config: {
          listen: `0.0.0.0:${ID_PORT}`,
          hostname: h,
          database: `sqlite:${join(STATE, 'id.db')}`,
          step: 10,
          auth: { allowUnauthenticated: true },
        },
      };
    return {
      name: h,
      role,
      config: {
        listen: `${ipOf(h)}:${STORAGE_PORT}`,
        hostname: h,
        group: VOLUME,
        storePaths: [this.dataPath],
        trackers: [`${ipOf('t1')}:${TRACKER_PORT}`, `${ipOf('t2')}:${TRACKER_PORT}`],
        idServers: [`${ID_VIP}:${ID_PORT}`],
        database: `sqlite:${join(STATE, 'storage.db')}`,
        beatIntervalMs: BEAT_MS,
        metaCacheTtlMs: 0,
        glusterVolume: VOLUME,
        healCheckIntervalMs: 1000,
        auth: { allowUnauthenticated: true },
      },
    };
  }

  /** Starts (or restarts) the dsm node of host `h` and waits for its ready line. */
  async startNode(h: Host, timeoutMs = 60_000): Promise<void> {
    const { name, role, config } = this.nodeConfig(h);
    const configFile = join(STATE, `${name}.json`);
    writeFileSync(configFile, `${JSON.stringify(config, null, 2)}\n`);
    const logFile = join(STATE, 'logs', `${name}.log`);
    const err = openSync(logFile, 'a');
    const child = spawn(
      'nsenter',
      [
        `--net=/run/netns/${ns(h)}`,
        ...(role === 'storage' ? [`--mount=${mntFile(h)}`] : []),
        '--',
        process.execPath,
        DSM_BIN,
        role,
        '--config',
        configFile,
      ],
      {
        env: { ...ENV, DSM_PARENT_PID: String(process.pid), DSM_LOG_LEVEL: 'warn' },
        stdio: ['ignore', 'pipe', err],
      },
    );
    closeSync(err);
    if (child.pid) this.#pids.add(child.pid);
    this.#children.add(child);
    const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
    void exited.then(() => this.#children.delete(child));
    let ready = false;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`${name} not ready within ${timeoutMs} ms (log ${logFile})`));
      }, timeoutMs);
      createInterface({ input: child.stdout! }).on('line', (line) => {
        if (line.startsWith('{"ready"')) {
          ready = true;
          clearTimeout(timer);
          resolve();
        }
      });
      void exited.then((code) => {
        if (ready) return;
        clearTimeout(timer);
        const tail = existsSync(logFile) ? readFileSync(logFile, 'utf8').slice(-800) : '';
        reject(new Error(`${name} exited (${code}) before it was ready: ${tail}`));
      });
    });
    this.nodes.set(name, { name, host: h, role, configFile, child, pid: child.pid });
  }

  /** SIGKILL the dsm node of host `h` (a process crash). */
  async killNode(h: Host): Promise<void> {
    const n = this.nodes.get(h);
    if (!n?.child) return;
    const c = n.child;
    const gone = new Promise((r) => c.once('exit', r));
    c.kill('SIGKILL');
    await gone;
    n.child = null;
  }

  async startKeepalived(h: Host): Promise<void> {
    const d = STATE;
    for (const f of ['kpid', 'vpid', 'cpid']) rmSync(join(d, `keepalived-${h}.${f}`), { force: true });
    // a stale VIP left by a SIGKILLed keepalived would make two holders (recipes P12)
    for (const vip of [TRACKER_VIP, ID_VIP])
      shSync('ip', ['-n', ns(h), 'addr', 'del', `${vip}/24`, 'dev', 'eth0']);
    this.#spawnDetached(
      h,
      [
        'keepalived',
        '-n',
        '-l',
        '-D',
        '-G',
        '-P',
        '-f',
        join(d, `keepalived-${h}.conf`),
        '-p',
        join(d, `keepalived-${h}.kpid`),
        '-r',
        join(d, `keepalived-${h}.vpid`),
        '-c',
        join(d, `keepalived-${h}.cpid`),
      ],
      `keepalived-${h}.log`,
    );
    await until(
      `keepalived on ${h}`,
      10_000,
      () => existsSync(join(d, `keepalived-${h}.vpid`)) && statSync(join(d, `keepalived-${h}.vpid`)).size > 0,
    );
    const v = Number(readFileSync(join(d, `keepalived-${h}.vpid`), 'utf8'));
    if (v) this.#pids.add(v);
  }

  /** After a host crash (keepalived SIGKILLed + cable cut): drop the stale VIP, cable back, keepalived back. */
  async startKeepalivedAfterCrash(h: Host): Promise<void> {
    for (const vip of [TRACKER_VIP, ID_VIP])
      shSync('ip', ['-n', ns(h), 'addr', 'del', `${vip}/24`, 'dev', 'eth0']);
    await this.uncut(h);
    await this.startKeepalived(h);
  }

  /** SIGKILL keepalived (parent and VRRP child) of host `h`. */
  killKeepalived(h: Host): void {
    for (const f of ['vpid', 'kpid']) {
      const file = join(STATE, `keepalived-${h}.${f}`);
      const pid = existsSync(file) ? Number(readFileSync(file, 'utf8')) : 0;
      if (pidAlive(pid)) process.kill(pid, 'SIGKILL');
    }
  }

  /**
   * Puts a VIP host back as a scenario expects to find it, whatever an earlier failed scenario
   * left: link and cable up, keepalived and the dsm node running.
   */
  async restoreVipHost(h: Host): Promise<void> {
    await this.linkUp(h);
    await this.uncut(h);
    const vpid = join(STATE, `keepalived-${h}.vpid`);
    if (!pidAlive(existsSync(vpid) ? Number(readFileSync(vpid, 'utf8')) : 0))
      await this.startKeepalivedAfterCrash(h);
    if (!this.nodes.get(h)?.child) await this.startNode(h);
  }

  /** Lab hosts whose eth0 holds `vip` now. */
  vipHolders(vip: string): Host[] {
    return HOSTS.filter((h) =>
      shSync('ip', ['-n', ns(h), '-4', '-o', 'addr', 'show', 'dev', 'eth0']).includes(` ${vip}/`),
    );
  }

  async cut(h: Host): Promise<void> {
    await sh('ip', ['-n', 'dsm-sw', 'link', 'set', `v-${h}`, 'down']);
  }

  async uncut(h: Host): Promise<void> {
    await sh('ip', ['-n', 'dsm-sw', 'link', 'set', `v-${h}`, 'up']);
  }

  /**
   * Cuts the network between storage host `h` and the other members of its group, and nothing
   * else: blackhole routes to the other members in `h`, and to `h` in each of them. Packets of
   * open connections vanish silently (GlusterFS notices through network.ping-timeout), new
   * connections fail at once (EINVAL). Clients, trackers and id servers still reach every host.
   */
  async cutGroup(h: StorageHost): Promise<void> {
    for (const o of STORAGE_HOSTS) {
      if (o === h) continue;
      await sh('ip', ['-n', ns(h), 'route', 'replace', 'blackhole', `${ipOf(o)}/32`]);
      await sh('ip', ['-n', ns(o), 'route', 'replace', 'blackhole', `${ipOf(h)}/32`]);
    }
  }

  /** Undoes `cutGroup(h)`. */
  async uncutGroup(h: StorageHost): Promise<void> {
    for (const o of STORAGE_HOSTS) {
      if (o === h) continue;
      shSync('ip', ['-n', ns(h), 'route', 'del', 'blackhole', `${ipOf(o)}/32`]);
      shSync('ip', ['-n', ns(o), 'route', 'del', 'blackhole', `${ipOf(h)}/32`]);
    }
    const left = STORAGE_HOSTS.filter((x) =>
      shSync('ip', ['-n', ns(x), 'route', 'show', 'type', 'blackhole']).trim(),
    );
    if (left.length) throw new Error(`blackhole routes left on ${left.join(', ')}`);
  }

  /** Entries GlusterFS lists as split-brain (`heal info split-brain`); throws when it cannot tell. */
  async splitBrainEntries(): Promise<number> {
    const via = STORAGE_HOSTS.find((h) => pidAlive(this.glusterdPid(h)))!;
    const out = await this.gl(via, 'volume', 'heal', VOLUME, 'info', 'split-brain');
    const counts = [...out.matchAll(/Number of entries in split-brain:\s*(\S+)/g)].map((m) => m[1]);
    if (counts.length !== STORAGE_HOSTS.length || counts.some((c) => !/^\d+$/.test(c ?? '')))
      throw new Error(`cannot read split-brain entries: ${out}`);
    return counts.reduce((a, c) => a + Number(c), 0);
  }

  /** Takes host `h`'s own interface down (a cable pulled at the host; its processes keep running). */
  async linkDown(h: Host): Promise<void> {
    await sh('ip', ['-n', ns(h), 'link', 'set', 'eth0', 'down']);
  }

  /** Brings `h`'s interface back with its address (a down link loses no address, but make sure). */
  async linkUp(h: Host): Promise<void> {
    await sh('ip', ['-n', ns(h), 'link', 'set', 'eth0', 'up']);
    await sh('ip', ['-n', ns(h), 'addr', 'replace', `${ipOf(h)}/24`, 'dev', 'eth0']);
  }

  async #startProxy(): Promise<void> {
    const child = this.#spawnDetached(
      'c',
      [process.execPath, join(SCRIPTS, 'ns-tcp-proxy.mjs'), this.proxySock],
      'proxy.log',
    );
    await until('the client connect proxy', 10_000, () => existsSync(this.proxySock));
    if (!child.pid) throw new Error('proxy did not start');
  }

  // ---- GlusterFS ---------------------------------------------------------------------------

  inNode(h: Host, argv: string[], timeoutMs = 60_000): Promise<string> {
    return sh('nsenter', [`--net=/run/netns/${ns(h)}`, `--mount=${mntFile(h)}`, '--', ...argv], timeoutMs);
  }

  gl(h: Host, ...args: string[]): Promise<string> {
    return this.inNode(h, ['gluster', '--mode=script', ...args]);
  }

  brickPath(h: StorageHost): string {
    return join(STATE, h, 'bricks', 'brick');
  }

  groupSteps() {
    return glusterGroupSteps({
      volume: VOLUME,
      hosts: STORAGE_HOSTS.map(ipOf),
      bricks: STORAGE_HOSTS.map((h) => `${ipOf(h)}:${this.brickPath(h)}`),
      replica: 3,
      force: true, // bricks on the root filesystem
      mountPoint: this.dataPath,
    });
  }

  async #makeMountNs(h: StorageHost): Promise<void> {
    const d = join(STATE, h);
    mkdirSync(join(d, 'lib'), { recursive: true });
    mkdirSync(join(d, 'log'), { recursive: true });
    mkdirSync(join(d, 'bricks'), { recursive: true });
    mkdirSync(MNTNS, { recursive: true });
    if (!isMounted(MNTNS)) await sh('mount', ['--bind', MNTNS, MNTNS]);
    await sh('mount', ['--make-private', MNTNS]);
    writeFileSync(mntFile(h), '');
    // gsyncd stub: glusterd runs geo-replication's python helper ~15 times at start (P17)
    const stub = join(d, 'gsyncd-stub');
    writeFileSync(stub, '#!/bin/sh\n[ "$1" = --version ] && echo "gsyncd.py 4.0.0 (test stub)"\nexit 0\n', {
      mode: 0o755,
    });
    const bindStub = existsSync(GSYNCD) ? `&& mount --bind ${stub} ${GSYNCD}` : '';
    await sh('unshare', [
      `--mount=${mntFile(h)}`,
      '--propagation',
      'slave',
      'sh',
      '-c',
      `mount --bind ${d}/lib /var/lib/glusterd && mount --bind ${d}/log /var/log/glusterfs && mount -t tmpfs -o mode=0755 dsm-run /run ${bindStub}`,
    ]);
  }

  async startGlusterd(h: StorageHost): Promise<void> {
    const d = join(STATE, h);
    rmSync(join(d, 'glusterd.pid'), { force: true });
    await this.inNode(h, ['glusterd', '-p', join(d, 'glusterd.pid'), '-l', join(d, 'glusterd.log')]);
    await until(`glusterd on ${h}`, 30_000, async () => {
      await this.gl(h, 'pool', 'list');
      return true;
    });
  }

  async #startGluster(): Promise<void> {
    for (const h of STORAGE_HOSTS) await this.#makeMountNs(h);
    await Promise.all(STORAGE_HOSTS.map((h) => this.startGlusterd(h)));
    const steps = this.groupSteps();
    for (const cmd of steps.commands) {
      if (cmd[2] === 'volume' && cmd[3] === 'create') {
        await until('all gluster peers connected', 30_000, async () => {
          const out = await this.gl('s1', 'pool', 'list');
          return out.split('\n').filter((l) => /Connected\s*$/.test(l)).length === 3;
        });
      }
      await this.inNode('s1', cmd);
    }
    await until(`all bricks of ${VOLUME} online`, 30_000, async () => (await this.brickPids()).size === 3);
    await Promise.all(STORAGE_HOSTS.map((h) => this.mountVolume(h)));
  }

  async mountVolume(h: StorageHost): Promise<void> {
    const m = this.groupSteps().mount;
    const opts = [...m.options, `log-file=${join(STATE, h, 'mount.log')}`].join(',');
    // the source is this host's own glusterd first, the others as backups
    const others = STORAGE_HOSTS.filter((x) => x !== h).map(ipOf);
    const o = opts.replace(/backup-volfile-servers=[^,]*/, `backup-volfile-servers=${others.join(':')}`);
    await this.inNode(h, ['sh', '-c', `umount -l ${this.dataPath} 2>/dev/null; true`]);
    await this.inNode(h, ['mount', '-t', 'glusterfs', '-o', o, `${ipOf(h)}:/${VOLUME}`, this.dataPath]);
    await until(`mount on ${h}`, 15_000, async () => {
      await this.inNode(h, ['stat', '-f', this.dataPath]);
      return true;
    });
  }

  /** host -> pid of its brick process (glusterfsd) for bricks gluster reports online. */
  async brickPids(): Promise<Map<string, number>> {
    const via = STORAGE_HOSTS.find((h) => pidAlive(this.glusterdPid(h))) ?? 's1';
    const xml = await this.gl(via, 'volume', 'status', VOLUME, '--xml').catch(() => '');
    const out = new Map<string, number>();
    for (const node of xml.split('<node>').slice(1)) {
      const host = /<hostname>([^<]*)</.exec(node)?.[1];
      const status = /<status>([^<]*)</.exec(node)?.[1];
      const pid = Number(/<pid>([^<]*)</.exec(node)?.[1]);
      if (host && host !== 'Self-heal Daemon' && status === '1') out.set(host, pid);
    }
    return out;
  }

  glusterdPid(h: StorageHost): number {
    const f = join(STATE, h, 'glusterd.pid');
    return existsSync(f) ? Number(readFileSync(f, 'utf8')) : 0;
  }

  /** Every process living in host `h`'s namespaces (all of them ours). */
  hostPids(h: Host): number[] {
    return shSync('ip', ['netns', 'pids', ns(h)])
      .split('\n')
      .map(Number)
      .filter((p) => p > 0);
  }

  async killBrick(h: StorageHost): Promise<number> {
    const pid = (await this.brickPids()).get(ipOf(h));
    if (!pid) throw new Error(`no running brick on ${h}`);
    process.kill(pid, 'SIGKILL');
    await until(`brick pid ${pid} dead`, 10_000, () => !pidAlive(pid));
    return pid;
  }

  /** `volume start force` restarts dead bricks; stale pid files of zombie bricks block it (P5). */
  async restartBricks(): Promise<void> {
    for (const h of STORAGE_HOSTS) {
      if (!pidAlive(this.glusterdPid(h))) continue;
      const files = (
        await this.inNode(h, ['sh', '-c', `ls /run/gluster/vols/${VOLUME}/*.pid 2>/dev/null; true`])
      )
        .split('\n')
        .filter(Boolean);
      for (const f of files) {
        const pid = Number((await this.inNode(h, ['cat', f]).catch(() => '')).trim());
        if (!pidAlive(pid)) await this.inNode(h, ['rm', '-f', f]);
      }
    }
    const via = STORAGE_HOSTS.find((h) => pidAlive(this.glusterdPid(h)))!;
    await this.gl(via, 'volume', 'start', VOLUME, 'force');
    await until(`all bricks of ${VOLUME} online`, 30_000, async () => (await this.brickPids()).size === 3);
  }

  async pendingHeals(): Promise<number> {
    const via = STORAGE_HOSTS.find((h) => pidAlive(this.glusterdPid(h)))!;
    return parseHealInfo(await this.gl(via, 'volume', 'heal', VOLUME, 'info').catch(() => ''));
  }

  /** Triggers a heal every 5 s (after a cut the self-heal daemon may never notice, P6) until none is pending. */
  async healWait(timeoutMs = 60_000): Promise<number> {
    const t0 = Date.now();
    let next = 0;
    await until(
      'heal complete',
      timeoutMs,
      async () => {
        if (Date.now() >= next) {
          const via = STORAGE_HOSTS.find((h) => pidAlive(this.glusterdPid(h)))!;
          await this.gl(via, 'volume', 'heal', VOLUME).catch(() => '');
          next = Date.now() + 5000;
        }
        return (await this.pendingHeals()) === 0;
      },
      300,
    );
    return Date.now() - t0;
  }

  /**
   * A storage host dies: every process of it SIGKILLed (node, glusterd, brick, FUSE client) and
   * its cable cut. `silent` cuts the cable first, so no FIN/RST reaches anyone (a power loss):
   * the tracker only notices missing heartbeats, GlusterFS clients wait out network.ping-timeout.
   */
  async killHost(h: StorageHost, o: { silent?: boolean } = {}): Promise<void> {
    if (o.silent) await this.cut(h);
    // until none is left: glusterd may fork a helper between the listing and the kill
    await until(`all processes of ${h} dead`, 10_000, () => {
      const pids = this.hostPids(h).filter(pidAlive);
      for (const p of pids)
        try {
          process.kill(p, 'SIGKILL');
        } catch {}
      return pids.length === 0;
    });
    const n = this.nodes.get(h);
    if (n) n.child = null;
    if (!o.silent) await this.cut(h);
  }

  /** The host comes back: cable, glusterd, its brick, the mount, the storage node. */
  async reviveHost(h: StorageHost): Promise<void> {
    await this.uncut(h);
    await this.startGlusterd(h);
    await this.restartBricks();
    await this.mountVolume(h);
    await this.startNode(h);
  }

  // ---- cluster state -------------------------------------------------------------------------

  async waitStorages(count: number, timeoutMs = 15_000): Promise<void> {
    const c = this.client();
    try {
      await until(
        `${count} storages ACTIVE`,
        timeoutMs,
        async () => {
          const s = await c.tracker.status();
          return s.groups.flatMap((g) => g.storages).filter((x) => x.state === 'ACTIVE').length >= count;
        },
        200,
      );
    } finally {
      await c.close();
    }
  }

  // ---- teardown ------------------------------------------------------------------------------

  async down(): Promise<void> {
    this.downSync();
  }

  /** Synchronous, so it also runs from a process 'exit' hook. Idempotent. */
  downSync(): void {
    if (this.#down) return;
    this.#down = true;
    for (const c of this.#children) c.kill('SIGKILL');
    for (const p of this.#pids)
      if (pidAlive(p))
        try {
          process.kill(p, 'SIGKILL');
        } catch {}
    // keep the logs of the last run for a look after a failure (the state folder goes away)
    try {
      rmSync(LAST_LOGS, { recursive: true, force: true });
      if (existsSync(join(STATE, 'logs'))) cpSync(join(STATE, 'logs'), LAST_LOGS, { recursive: true });
      for (const h of STORAGE_HOSTS)
        for (const f of ['mount.log', 'glusterd.log'])
          if (existsSync(join(STATE, h, f))) cpSync(join(STATE, h, f), join(LAST_LOGS, `${h}-${f}`));
    } catch {}
    cleanupLeftovers();
    releaseLock();
  }
}

function isMounted(path: string): boolean {
  return readFileSync('/proc/self/mounts', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[1] === path);
}

function takeLock(): void {
  if (existsSync(LOCK)) {
    const pid = Number(readFileSync(LOCK, 'utf8'));
    if (pid !== process.pid && pidAlive(pid))
      throw new Error(`another HA lab run (pid ${pid}) holds ${LOCK}: HA tests must run one at a time`);
  }
  writeFileSync(LOCK, String(process.pid));
}

function releaseLock(): void {
  try {
    if (Number(readFileSync(LOCK, 'utf8')) === process.pid) rmSync(LOCK);
  } catch {}
}

/**
 * Removes whatever a lab run left: every process in the lab's network namespaces (they hold
 * nothing else), the mount namespaces, the network namespaces and the state folder.
 */
function cleanupLeftovers(): void {
  const nsList = shSync('ip', ['netns', 'list']);
  for (const h of HOSTS) {
    if (!nsList.includes(`dsm-${h}`)) continue;
    for (let round = 0; round < 50; round++) {
      const pids = shSync('ip', ['netns', 'pids', ns(h)])
        .split('\n')
        .map(Number)
        .filter((p) => p > 0 && pidAlive(p));
      if (pids.length === 0) break;
      for (const p of pids)
        try {
          process.kill(p, 'SIGKILL');
        } catch {}
      execFileSync('sleep', ['0.1']);
    }
  }
  if (existsSync(MNTNS)) {
    for (const f of readdirSync(MNTNS)) {
      const p = join(MNTNS, f);
      if (isMounted(p)) shSync('umount', [p]);
      rmSync(p, { force: true });
    }
    if (isMounted(MNTNS)) shSync('umount', [MNTNS]);
    try {
      rmSync(MNTNS, { recursive: true, force: true });
    } catch {}
  }
  shSync(join(SCRIPTS, 'netns-lab.sh'), ['down']);
  rmSync(STATE, { recursive: true, force: true });
}
