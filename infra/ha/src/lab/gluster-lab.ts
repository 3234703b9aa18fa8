/**
 * GlusterFS in the lab: a glusterd per storage host in the host's own mount namespace (private
 * /var/lib/glusterd, /var/log/glusterfs and /run), one brick each, the replica-3 group volume
 * made by @dsm/ha's `glusterGroupSteps` and mounted at the same path on every member.
 * The pitfalls named P5, P6 and P17 are described in infra/ha/README.md.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { until } from '@dsm/cluster';
import { type GlusterGroupSteps, glusterGroupSteps, parseHealInfo } from '../gluster.ts';
import { inNode, type NodeRunner, pidAlive, sh, shSync } from './processes.ts';
import {
  DATA_PATH,
  type Host,
  ipOf,
  LAB_STATE,
  MNTNS,
  mntnsOf,
  STORAGE_HOSTS,
  type StorageHost,
  VOLUME,
} from './topology.ts';

const GSYNCD = '/usr/lib/x86_64-linux-gnu/glusterfs/gsyncd';

function isMounted(path: string): boolean {
  return readFileSync('/proc/self/mounts', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[1] === path);
}

export interface GlusterLabOptions {
  /** Runs a command in a storage host's namespaces (default: nsenter); a recorder for dry runs. */
  run?: NodeRunner;
}

export class GlusterLab {
  readonly dataPath = DATA_PATH;
  readonly #run: NodeRunner;

  constructor(o: GlusterLabOptions = {}) {
    this.#run = o.run ?? inNode;
  }

  /** `argv` in storage host `h`'s network and mount namespaces. */
  inNode(h: Host, argv: string[], timeoutMs = 60_000): Promise<string> {
    return this.#run(h, argv, timeoutMs);
  }

  gl(h: Host, ...args: string[]): Promise<string> {
    return this.inNode(h, ['gluster', '--mode=script', ...args]);
  }

  brickPath(h: StorageHost): string {
    return join(LAB_STATE, h, 'bricks', 'brick');
  }

  /** The GlusterFS steps for the group volume (the same function Terraform's hosts run). */
  groupSteps(): GlusterGroupSteps {
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
    const d = join(LAB_STATE, h);
    mkdirSync(join(d, 'lib'), { recursive: true });
    mkdirSync(join(d, 'log'), { recursive: true });
    mkdirSync(join(d, 'bricks'), { recursive: true });
    mkdirSync(MNTNS, { recursive: true });
    if (!isMounted(MNTNS)) await sh('mount', ['--bind', MNTNS, MNTNS]);
    await sh('mount', ['--make-private', MNTNS]);
    writeFileSync(mntnsOf(h), '');
    // gsyncd stub: glusterd runs geo-replication's python helper ~15 times at start (P17)
    const stub = join(d, 'gsyncd-stub');
    writeFileSync(stub, '#!/bin/sh\n[ "$1" = --version ] && echo "gsyncd.py 4.0.0 (test stub)"\nexit 0\n', {
      mode: 0o755,
    });
    const bindStub = existsSync(GSYNCD) ? `&& mount --bind ${stub} ${GSYNCD}` : '';
    await sh('unshare', [
      `--mount=${mntnsOf(h)}`,
      '--propagation',
      'slave',
      'sh',
      '-c',
      `mount --bind ${d}/lib /var/lib/glusterd && mount --bind ${d}/log /var/log/glusterfs && mount -t tmpfs -o mode=0755 dsm-run /run ${bindStub}`,
    ]);
  }

  async startGlusterd(h: StorageHost): Promise<void> {
    const d = join(LAB_STATE, h);
    rmSync(join(d, 'glusterd.pid'), { force: true });
    await this.inNode(h, ['glusterd', '-p', join(d, 'glusterd.pid'), '-l', join(d, 'glusterd.log')]);
    await until(
      async () => {
        await this.gl(h, 'pool', 'list');
        return true;
      },
      30_000,
      100,
      `glusterd on ${h}`,
    );
  }

  /** Mount namespaces, glusterds, the pool, the volume (replica 3), its mount on every member. */
  async start(): Promise<void> {
    for (const h of STORAGE_HOSTS) await this.#makeMountNs(h);
    await Promise.all(STORAGE_HOSTS.map((h) => this.startGlusterd(h)));
    const steps = this.groupSteps();
    for (const cmd of steps.commands) {
      if (cmd[2] === 'volume' && cmd[3] === 'create') {
        await until(
          async () => {
            const out = await this.gl('s1', 'pool', 'list');
            return out.split('\n').filter((l) => /Connected\s*$/.test(l)).length === 3;
          },
          30_000,
          100,
          'all gluster peers connected',
        );
      }
      await this.inNode('s1', cmd);
    }
    await until(
      async () => (await this.brickPids()).size === 3,
      30_000,
      100,
      `all bricks of ${VOLUME} online`,
    );
    await Promise.all(STORAGE_HOSTS.map((h) => this.mountVolume(h)));
  }

  async mountVolume(h: StorageHost): Promise<void> {
    const m = this.groupSteps().mount;
    const opts = [...m.options, `log-file=${join(LAB_STATE, h, 'mount.log')}`].join(',');
    // the source is this host's own glusterd first, the others as backups
    const others = STORAGE_HOSTS.filter((x) => x !== h).map(ipOf);
    const o = opts.replace(/backup-volfile-servers=[^,]*/, `backup-volfile-servers=${others.join(':')}`);
    await this.inNode(h, ['sh', '-c', `umount -l ${this.dataPath} 2>/dev/null; true`]);
    await this.inNode(h, ['mount', '-t', 'glusterfs', '-o', o, `${ipOf(h)}:/${VOLUME}`, this.dataPath]);
    await until(
      async () => {
        await this.inNode(h, ['stat', '-f', this.dataPath]);
        return true;
      },
      15_000,
      100,
      `mount on ${h}`,
    );
  }

  glusterdPid(h: StorageHost): number {
    const f = join(LAB_STATE, h, 'glusterd.pid');
    return existsSync(f) ? Number(readFileSync(f, 'utf8')) : 0;
  }

  /** A storage host whose glusterd is alive (to ask the pool from). */
  #alive(): StorageHost | undefined {
    return STORAGE_HOSTS.find((h) => pidAlive(this.glusterdPid(h)));
  }

  #via(): StorageHost {
    const h = this.#alive();
    if (!h) throw new Error('no storage host of the lab has a running glusterd');
    return h;
  }

  /** host address -> pid of its brick process (glusterfsd) for bricks gluster reports online. */
  async brickPids(): Promise<Map<string, number>> {
    const via = this.#alive() ?? 's1';
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

  async killBrick(h: StorageHost): Promise<number> {
    const pid = (await this.brickPids()).get(ipOf(h));
    if (!pid) throw new Error(`no running brick on ${h}`);
    process.kill(pid, 'SIGKILL');
    await until(() => !pidAlive(pid), 10_000, 100, `brick pid ${pid} dead`);
    return pid;
  }

  /**
   * `volume start force` restarts dead bricks; stale pid files of zombie bricks block it (P5).
   * A `start force` that started nothing (a killed brick still exiting when its pid file was
   * checked) is made again, with the pid files checked again, every 10 s for 40 s in all.
   */
  async restartBricks(): Promise<void> {
    const deadline = Date.now() + 40_000;
    for (;;) {
      await this.#dropStalePidFiles();
      await this.gl(this.#via(), 'volume', 'start', VOLUME, 'force');
      try {
        await until(
          async () => (await this.brickPids()).size === 3,
          Math.max(1000, Math.min(10_000, deadline - Date.now())),
          100,
          `all bricks of ${VOLUME} online`,
        );
        return;
      } catch (e) {
        if (Date.now() >= deadline) throw e;
      }
    }
  }

  async #dropStalePidFiles(): Promise<void> {
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
  }

  async pendingHeals(): Promise<number> {
    const via = this.#alive();
    const out = via ? await this.gl(via, 'volume', 'heal', VOLUME, 'info').catch(() => '') : '';
    return parseHealInfo(out);
  }

  /** Triggers a heal every 5 s (after a cut the self-heal daemon may never notice, P6) until none is pending. */
  async healWait(timeoutMs = 60_000): Promise<number> {
    const t0 = Date.now();
    let next = 0;
    await until(
      async () => {
        if (Date.now() >= next) {
          const via = this.#alive();
          if (via) await this.gl(via, 'volume', 'heal', VOLUME).catch(() => '');
          next = Date.now() + 5000;
        }
        return (await this.pendingHeals()) === 0;
      },
      timeoutMs,
      300,
      'heal complete',
    );
    return Date.now() - t0;
  }

  /** Entries GlusterFS lists as split-brain (`heal info split-brain`); throws when it cannot tell. */
  async splitBrainEntries(): Promise<number> {
    const out = await this.gl(this.#via(), 'volume', 'heal', VOLUME, 'info', 'split-brain');
    const counts = [...out.matchAll(/Number of entries in split-brain:\s*(\S+)/g)].map((m) => m[1]);
    if (counts.length !== STORAGE_HOSTS.length || counts.some((c) => !/^\d+$/.test(c ?? '')))
      throw new Error(`cannot read split-brain entries: ${out}`);
    return counts.reduce((a, c) => a + Number(c), 0);
  }

  /** Unmounts and removes the storage hosts' mount namespaces. Synchronous (teardown). */
  removeMountNamespacesSync(): void {
    if (!existsSync(MNTNS)) return;
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
}
