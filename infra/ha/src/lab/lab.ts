/**
 * A dsm cluster across network namespaces, with the real daemons (the netns recipe of
 * docs/reliability.md, "The test cluster"; the pitfalls named P5, P6, P12 and P17 in comments
 * are described in infra/ha/README.md). Hosts and addresses: topology.ts.
 *
 * The lab composes its parts: the network (netns.ts), keepalived (keepalived-lab.ts),
 * GlusterFS (gluster-lab.ts) and the processes it started (processes.ts). Storage hosts also
 * get their own mount namespace (private /var/lib/glusterd, /run, and the group volume mounted
 * at the same path on every member, as production storages share one store path). Everything
 * started is recorded by PID; `down()` (also run from a process 'exit' hook) kills exactly that,
 * every process left in the lab's namespaces, the mount namespaces and the network namespaces.
 */
import { cpSync, existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DsmClient, IdClient, Pool } from '@dsm/client';
import { until } from '@dsm/cluster';
import { GlusterLab } from './gluster-lab.ts';
import { KeepalivedLab } from './keepalived-lab.ts';
import { LabNetwork, releaseLabLock, takeLabLock } from './netns.ts';
import { LabProcesses, type NodeRole, pidAlive, sh } from './processes.ts';
import {
  BEAT_MS,
  BEAT_TIMEOUT_MS,
  DATA_PATH,
  type Host,
  ID_PORT,
  ID_VIP,
  ipOf,
  LAB_STATE,
  LAST_LOGS,
  SCRIPTS,
  STORAGE_HOSTS,
  STORAGE_PORT,
  type StorageHost,
  SWEEP_MS,
  TRACKER_PORT,
  TRACKER_VIP,
  type VipHost,
  VOLUME,
} from './topology.ts';
import { labTransport } from './transport.ts';

/** The config file of one dsm node of the lab (what the lab writes before it starts the node). */
export interface LabNodeConfig {
  name: string;
  role: NodeRole;
  config: Record<string, unknown>;
}

export class Lab {
  readonly dir = LAB_STATE;
  readonly dataPath = DATA_PATH;
  readonly procs = new LabProcesses();
  readonly net = new LabNetwork();
  readonly keepalived = new KeepalivedLab(this.procs, this.net);
  readonly gluster = new GlusterLab();
  proxySock = join(LAB_STATE, 'proxy.sock');
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
    takeLabLock();
    const lab = new Lab();
    lab.#removeLeftovers();
    process.once('exit', () => lab.downSync());
    const t0 = Date.now();
    try {
      mkdirSync(lab.dataPath, { recursive: true });
      mkdirSync(join(LAB_STATE, 'logs'), { recursive: true });
      await lab.net.up();
      log(`lab network up (${Date.now() - t0} ms)`);
      await lab.gluster.start();
      log(`group volume ${VOLUME} (replica 3) started and mounted on s1..s3 (${Date.now() - t0} ms)`);
      await lab.#startProxy();
      await Promise.all((['i1', 'i2', 't1', 't2'] as const).map((h) => lab.startNode(h)));
      const pairs = await lab.keepalived.writeConfs();
      await Promise.all(
        pairs.map(async (p) => {
          for (const h of p.hosts) await lab.keepalived.start(h);
        }),
      );
      await until(() => lab.net.vipHolders(TRACKER_VIP).join() === 't1', 15_000, 100, 'tracker VIP on t1');
      await until(() => lab.net.vipHolders(ID_VIP).join() === 'i1', 15_000, 100, 'id VIP on i1');
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

  async #startProxy(): Promise<void> {
    const child = this.procs.spawnDetached(
      'c',
      [process.execPath, join(SCRIPTS, 'ns-tcp-proxy.mjs'), this.proxySock],
      'proxy.log',
    );
    await until(() => existsSync(this.proxySock), 10_000, 100, 'the client connect proxy');
    if (!child.pid) throw new Error('proxy did not start');
  }

  // ---- dsm nodes ---------------------------------------------------------------------------

  nodeConfig(h: Host): LabNodeConfig {
    const role = h.startsWith('t') ? 'tracker' : h.startsWith('i') ? 'id' : 'storage';
    if (role === 'tracker')
      return {
        name: h,
        role,
        config: {
          listen: `0.0.0.0:${TRACKER_PORT}`,
          hostname: h,
          database: `sqlite:${join(LAB_STATE, 'tracker.db')}`,
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
          database: `sqlite:${join(LAB_STATE, 'id.db')}`,
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
        database: `sqlite:${join(LAB_STATE, 'storage.db')}`,
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
    const configFile = join(LAB_STATE, `${name}.json`);
    writeFileSync(configFile, `${JSON.stringify(config, null, 2)}\n`);
    await this.procs.startNode(h, name, role, configFile, timeoutMs);
  }

  /** SIGKILL the dsm node of host `h` (a process crash). */
  async killNode(h: Host): Promise<void> {
    await this.procs.killNode(h);
  }

  // ---- whole hosts -------------------------------------------------------------------------

  /**
   * Puts a VIP host back as a scenario expects to find it, whatever an earlier failed scenario
   * left: link and cable up, keepalived and the dsm node running.
   */
  async restoreVipHost(h: VipHost): Promise<void> {
    await this.net.linkUp(h);
    await this.net.uncut(h);
    if (!this.keepalived.running(h)) await this.keepalived.startAfterCrash(h);
    if (!this.procs.nodes.get(h)?.child) await this.startNode(h);
  }

  /**
   * A storage host dies: every process of it SIGKILLed (node, glusterd, brick, FUSE client) and
   * its cable cut. `silent` cuts the cable first, so no FIN/RST reaches anyone (a power loss):
   * the tracker only notices missing heartbeats, GlusterFS clients wait out network.ping-timeout.
   */
  async killHost(h: StorageHost, o: { silent?: boolean } = {}): Promise<void> {
    if (o.silent) await this.net.cut(h);
    // until none is left: glusterd may fork a helper between the listing and the kill
    await until(
      () => {
        const pids = this.net.hostPids(h).filter(pidAlive);
        for (const p of pids)
          try {
            process.kill(p, 'SIGKILL');
          } catch {}
        return pids.length === 0;
      },
      10_000,
      100,
      `all processes of ${h} dead`,
    );
    this.procs.forget(h);
    if (!o.silent) await this.net.cut(h);
  }

  /** The host comes back: cable, glusterd, its brick, the mount, the storage node. */
  async reviveHost(h: StorageHost): Promise<void> {
    await this.net.uncut(h);
    await this.gluster.startGlusterd(h);
    await this.gluster.restartBricks();
    await this.gluster.mountVolume(h);
    await this.startNode(h);
  }

  // ---- cluster state -----------------------------------------------------------------------

  async waitStorages(count: number, timeoutMs = 15_000): Promise<void> {
    const c = this.client();
    try {
      await until(
        async () => {
          const s = await c.tracker.status();
          return s.groups.flatMap((g) => g.storages).filter((x) => x.state === 'ACTIVE').length >= count;
        },
        timeoutMs,
        200,
        `${count} storages ACTIVE`,
      );
    } finally {
      await c.close();
    }
  }

  // ---- teardown ----------------------------------------------------------------------------

  async down(): Promise<void> {
    this.downSync();
  }

  /** Synchronous, so it also runs from a process 'exit' hook. Idempotent. */
  downSync(): void {
    if (this.#down) return;
    this.#down = true;
    this.procs.killAll();
    // keep the logs of the last run for a look after a failure (the state folder goes away)
    try {
      rmSync(LAST_LOGS, { recursive: true, force: true });
      if (existsSync(join(LAB_STATE, 'logs')))
        cpSync(join(LAB_STATE, 'logs'), LAST_LOGS, { recursive: true });
      for (const h of STORAGE_HOSTS)
        for (const f of ['mount.log', 'glusterd.log'])
          if (existsSync(join(LAB_STATE, h, f))) cpSync(join(LAB_STATE, h, f), join(LAST_LOGS, `${h}-${f}`));
    } catch {}
    this.#removeLeftovers();
    releaseLabLock();
  }

  /**
   * Removes whatever a lab run left: every process in the lab's network namespaces, the mount
   * namespaces, the network namespaces and the state folder.
   */
  #removeLeftovers(): void {
    this.net.killLeftoversSync();
    this.gluster.removeMountNamespacesSync();
    this.net.downSync();
    rmSync(LAB_STATE, { recursive: true, force: true });
  }
}
