/**
 * The lab's network: one network namespace per host (`dsm-<host>`) on a bridge that lives in
 * its own namespace `dsm-sw` (infra/ha/scripts/netns-lab.sh), addresses in 10.213.0.0/24 only,
 * no default route. Faults: a cable pulled at the switch (`cut`), at the host (`linkDown`), or
 * only between the members of the storage group (`cutGroup`).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pidAlive, sh, shSync } from './processes.ts';
import {
  HOSTS,
  type Host,
  ID_VIP,
  ipOf,
  LOCK,
  netnsOf,
  SCRIPTS,
  STORAGE_HOSTS,
  type StorageHost,
  TRACKER_VIP,
} from './topology.ts';

export class LabNetwork {
  /** Creates the namespaces, the bridge and the addresses. */
  async up(): Promise<void> {
    await sh(join(SCRIPTS, 'netns-lab.sh'), ['up'], 30_000);
  }

  /** Lab hosts whose eth0 holds `vip` now. */
  vipHolders(vip: string): Host[] {
    return HOSTS.filter((h) =>
      shSync('ip', ['-n', netnsOf(h), '-4', '-o', 'addr', 'show', 'dev', 'eth0']).includes(` ${vip}/`),
    );
  }

  /** Removes both VIPs from `h` (a SIGKILLed keepalived leaves its VIP configured: pitfall P12). */
  dropVips(h: Host): void {
    for (const vip of [TRACKER_VIP, ID_VIP])
      shSync('ip', ['-n', netnsOf(h), 'addr', 'del', `${vip}/24`, 'dev', 'eth0']);
  }

  /** Pulls `h`'s cable at the switch. */
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
      await sh('ip', ['-n', netnsOf(h), 'route', 'replace', 'blackhole', `${ipOf(o)}/32`]);
      await sh('ip', ['-n', netnsOf(o), 'route', 'replace', 'blackhole', `${ipOf(h)}/32`]);
    }
  }

  /** Undoes `cutGroup(h)`. */
  async uncutGroup(h: StorageHost): Promise<void> {
    for (const o of STORAGE_HOSTS) {
      if (o === h) continue;
      shSync('ip', ['-n', netnsOf(h), 'route', 'del', 'blackhole', `${ipOf(o)}/32`]);
      shSync('ip', ['-n', netnsOf(o), 'route', 'del', 'blackhole', `${ipOf(h)}/32`]);
    }
    const left = STORAGE_HOSTS.filter((x) =>
      shSync('ip', ['-n', netnsOf(x), 'route', 'show', 'type', 'blackhole']).trim(),
    );
    if (left.length) throw new Error(`blackhole routes left on ${left.join(', ')}`);
  }

  /** Takes host `h`'s own interface down (a cable pulled at the host; its processes keep running). */
  async linkDown(h: Host): Promise<void> {
    await sh('ip', ['-n', netnsOf(h), 'link', 'set', 'eth0', 'down']);
  }

  /** Brings `h`'s interface back with its address (a down link loses no address, but make sure). */
  async linkUp(h: Host): Promise<void> {
    await sh('ip', ['-n', netnsOf(h), 'link', 'set', 'eth0', 'up']);
    await sh('ip', ['-n', netnsOf(h), 'addr', 'replace', `${ipOf(h)}/24`, 'dev', 'eth0']);
  }

  /** Every process living in host `h`'s namespaces (all of them the lab's). */
  hostPids(h: Host): number[] {
    return shSync('ip', ['netns', 'pids', netnsOf(h)])
      .split('\n')
      .map(Number)
      .filter((p) => p > 0);
  }

  /**
   * Kills every process left in the lab's network namespaces (they hold nothing else).
   * Synchronous (teardown runs from a process 'exit' hook).
   */
  killLeftoversSync(): void {
    const nsList = shSync('ip', ['netns', 'list']);
    for (const h of HOSTS) {
      if (!nsList.includes(netnsOf(h))) continue;
      for (let round = 0; round < 50; round++) {
        const pids = this.hostPids(h).filter(pidAlive);
        if (pids.length === 0) break;
        for (const p of pids)
          try {
            process.kill(p, 'SIGKILL');
          } catch {}
        execFileSync('sleep', ['0.1']);
      }
    }
  }

  /** Removes the namespaces and the bridge (after `killLeftoversSync`). */
  downSync(): void {
    shSync(join(SCRIPTS, 'netns-lab.sh'), ['down']);
  }
}

/** One lab at a time (fixed namespace names): a second run fails with a clear message. */
export function takeLabLock(): void {
  if (existsSync(LOCK)) {
    const pid = Number(readFileSync(LOCK, 'utf8'));
    if (pid !== process.pid && pidAlive(pid))
      throw new Error(`another HA lab run (pid ${pid}) holds ${LOCK}: HA tests must run one at a time`);
  }
  writeFileSync(LOCK, String(process.pid));
}

export function releaseLabLock(): void {
  try {
    if (Number(readFileSync(LOCK, 'utf8')) === process.pid) rmSync(LOCK);
  } catch {}
}
