/**
 * Keepalived in the lab: the tracker pair (t1, t2; VIP 10.213.0.100, router id 51) and the
 * id-server pair (i1, i2; VIP 10.213.0.101, router id 52), rendered by @dsm/ha's `renderVipPair`
 * and run in the hosts' namespaces with their pid files in the lab's state folder.
 */
import { existsSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { until } from '@dsm/cluster';
import { Command } from '@dsm/packets';
import { renderVipPair } from '../keepalived.ts';
import type { LabNetwork } from './netns.ts';
import { type LabProcesses, pidAlive, sh } from './processes.ts';
import {
  ID_PORT,
  ID_VIP,
  ipOf,
  LAB_STATE,
  PREEMPT_DELAY_MS,
  TRACKER_PORT,
  TRACKER_VIP,
  type VipHost,
} from './topology.ts';

/** The keepalived.conf files of one VIP pair. */
export interface LabVipPair {
  hosts: VipHost[];
  confs: { name: string; conf: string }[];
}

/**
 * keepalived.conf of every VIP host of the lab, as the lab writes and starts them. Pure
 * (renders only), so the Terraform parity check compares with exactly this.
 */
export function labVipConfs(trackFileDir = LAB_STATE): LabVipPair[] {
  const pairs: {
    role: 'tracker' | 'id';
    hosts: VipHost[];
    vip: string;
    vrid: number;
    port: number;
    reply: number;
  }[] = [
    {
      role: 'tracker',
      hosts: ['t1', 't2'],
      vip: TRACKER_VIP,
      vrid: 51,
      port: TRACKER_PORT,
      reply: Command.TRACKER_REPLY,
    },
    { role: 'id', hosts: ['i1', 'i2'], vip: ID_VIP, vrid: 52, port: ID_PORT, reply: Command.ID_REPLY },
  ];
  return pairs.map((p) => ({
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

const file = (h: VipHost, ext: string) => join(LAB_STATE, `keepalived-${h}.${ext}`);

export class KeepalivedLab {
  readonly #procs: LabProcesses;
  readonly #net: LabNetwork;

  constructor(procs: LabProcesses, net: LabNetwork) {
    this.#procs = procs;
    this.#net = net;
  }

  /** Writes every host's keepalived.conf and checks it with `keepalived -t`. */
  async writeConfs(): Promise<LabVipPair[]> {
    const pairs = labVipConfs(LAB_STATE);
    for (const p of pairs)
      for (const c of p.confs) {
        const f = join(LAB_STATE, `keepalived-${c.name}.conf`);
        writeFileSync(f, c.conf);
        await sh('keepalived', ['-t', '-f', f]);
      }
    return pairs;
  }

  /** Starts keepalived on `h` and waits for its VRRP child's pid file. */
  async start(h: VipHost): Promise<void> {
    for (const f of ['kpid', 'vpid', 'cpid']) rmSync(file(h, f), { force: true });
    // a stale VIP left by a SIGKILLed keepalived would make two holders (pitfall P12)
    this.#net.dropVips(h);
    this.#procs.spawnDetached(
      h,
      [
        'keepalived',
        '-n',
        '-l',
        '-D',
        '-G',
        '-P',
        '-f',
        file(h, 'conf'),
        '-p',
        file(h, 'kpid'),
        '-r',
        file(h, 'vpid'),
        '-c',
        file(h, 'cpid'),
      ],
      `keepalived-${h}.log`,
    );
    await until(
      () => existsSync(file(h, 'vpid')) && statSync(file(h, 'vpid')).size > 0,
      10_000,
      100,
      `keepalived on ${h}`,
    );
    this.#procs.adopt(Number(readFileSync(file(h, 'vpid'), 'utf8')));
  }

  /** After a host crash (keepalived SIGKILLed + cable cut): drop the stale VIP, cable back, keepalived back. */
  async startAfterCrash(h: VipHost): Promise<void> {
    this.#net.dropVips(h);
    await this.#net.uncut(h);
    await this.start(h);
  }

  /** SIGKILL keepalived (parent and VRRP child) of host `h`. */
  kill(h: VipHost): void {
    for (const f of ['vpid', 'kpid']) {
      const pid = existsSync(file(h, f)) ? Number(readFileSync(file(h, f), 'utf8')) : 0;
      if (pidAlive(pid)) process.kill(pid, 'SIGKILL');
    }
  }

  /** Keepalived's VRRP process on `h` is alive. */
  running(h: VipHost): boolean {
    return pidAlive(existsSync(file(h, 'vpid')) ? Number(readFileSync(file(h, 'vpid'), 'utf8')) : 0);
  }
}
