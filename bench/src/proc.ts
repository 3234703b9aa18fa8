import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const TICKS_PER_SECOND = 100; // USER_HZ on Linux

export interface CpuTimes {
  user: number;
  sys: number;
}

/** User and system CPU seconds used so far by a process (from /proc/<pid>/stat); 0 if gone. */
export function cpuTimes(pid: number): CpuTimes {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15
    return { user: Number(fields[11]) / TICKS_PER_SECOND, sys: Number(fields[12]) / TICKS_PER_SECOND };
  } catch {
    return { user: 0, sys: 0 };
  }
}

/** User + system CPU seconds of several processes together. */
export function cpuOf(pids: number[]): number {
  return pids.reduce((s, p) => {
    const t = cpuTimes(p);
    return s + t.user + t.sys;
  }, 0);
}

/** User and system CPU seconds of several processes together. */
export function cpuSplitOf(pids: number[]): CpuTimes {
  const sum = { user: 0, sys: 0 };
  for (const p of pids) {
    const t = cpuTimes(p);
    sum.user += t.user;
    sum.sys += t.sys;
  }
  return sum;
}

function cpuTotals(): { idle: number; total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal …
  const idle = (v[3] ?? 0) + (v[4] ?? 0);
  return { idle, total: v.slice(0, 8).reduce((a, b) => a + b, 0) };
}

/** Fraction of the machine's CPU time that was idle over the next `ms`. */
export async function idleFraction(ms: number): Promise<number> {
  const a = cpuTotals();
  await new Promise((r) => setTimeout(r, ms));
  const b = cpuTotals();
  return b.total > a.total ? (b.idle - a.idle) / (b.total - a.total) : 1;
}

/**
 * Waits until the machine is idle-ish (≥ `minIdle` of the CPU idle over 3 s windows) or
 * `maxMs` passed; returns the last idle fraction seen.
 */
export async function waitForIdle(minIdle: number, maxMs: number, log: (m: string) => void): Promise<number> {
  const deadline = Date.now() + maxMs;
  for (;;) {
    const idle = await idleFraction(3000);
    if (idle >= minIdle || Date.now() >= deadline) return idle;
    log(`machine busy (${Math.round(idle * 100)}% idle); waiting`);
  }
}

/** Dirty + Writeback page-cache bytes of the machine (/proc/meminfo); 0 if unknown. */
export function unwrittenBytes(): number {
  try {
    const text = readFileSync('/proc/meminfo', 'utf8');
    let kb = 0;
    for (const m of text.matchAll(/^(?:Dirty|Writeback):\s+(\d+) kB/gm)) kb += Number(m[1]);
    return kb * 1024;
  } catch {
    return 0;
  }
}

/**
 * Waits (at most `maxMs`) until the kernel has written back the machine's dirty page cache, so
 * that no timed step shares the CPU and the disk with write-back of files written before it
 * (a 1 GiB copy left dirty is written back about 30 s later, in the middle of what comes next).
 * Asks for it with sync(1) first. Returns the bytes still unwritten.
 */
export async function settleWriteback(maxMs: number, log: (m: string) => void): Promise<number> {
  const limit = 32 * 1024 * 1024;
  if (unwrittenBytes() <= limit) return unwrittenBytes();
  const t0 = Date.now();
  spawnSync('sync', [], { stdio: 'ignore', timeout: maxMs });
  for (;;) {
    const left = unwrittenBytes();
    if (left <= limit || Date.now() - t0 >= maxMs) {
      log(`page cache written back in ${Date.now() - t0} ms (${(left / 1048576).toFixed(0)} MiB left)`);
      return left;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

interface ProcSample {
  ppid: number;
  kernel: boolean;
  start: string;
  cpu: number;
  /** CPU of its children that it has waited for (cutime + cstime). */
  childCpu: number;
}

const PF_KTHREAD = 0x00200000;

function scanProcesses(): Map<number, ProcSample> {
  const out = new Map<number, ProcSample>();
  let names: string[] = [];
  try {
    names = readdirSync('/proc');
  } catch {
    return out;
  }
  for (const name of names) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const text = readFileSync(`/proc/${name}/stat`, 'utf8');
      const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
      // f[0] = field 3 (state): ppid = field 4, flags = 9, utime = 14, stime = 15, starttime = 22
      out.set(Number(name), {
        ppid: Number(f[1]),
        kernel: (Number(f[6]) & PF_KTHREAD) !== 0,
        start: f[19] ?? '',
        cpu: (Number(f[11]) + Number(f[12])) / TICKS_PER_SECOND,
        childCpu: (Number(f[13]) + Number(f[14])) / TICKS_PER_SECOND,
      });
    } catch {
      // exited while we looked
    }
  }
  return out;
}

/** This process and everything started under it (cluster nodes, nginx, their helpers). */
function ownPids(procs: Map<number, ProcSample>): Set<number> {
  const own = new Set<number>([process.pid]);
  let grew = true;
  while (grew) {
    grew = false;
    for (const [pid, p] of procs) {
      if (!own.has(pid) && own.has(p.ppid)) {
        own.add(pid);
        grew = true;
      }
    }
  }
  return own;
}

/** user + nice + system and steal seconds of the whole machine so far (/proc/stat). */
function machineCpu(): { busy: number; steal: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  return {
    busy: ((v[0] ?? 0) + (v[1] ?? 0) + (v[2] ?? 0)) / TICKS_PER_SECOND,
    steal: (v[7] ?? 0) / TICKS_PER_SECOND,
  };
}

/**
 * CPU seconds of this process and everything under it, including the children they have
 * waited for (a curl or wrk that ran and exited, a gateway restarted): no double count, since a
 * child is either alive (its own times) or reaped (in its parent's cutime/cstime).
 */
function ownCpu(procs: Map<number, ProcSample>): number {
  let sum = 0;
  for (const pid of ownPids(procs)) {
    const p = procs.get(pid);
    if (p) sum += p.cpu + p.childCpu;
  }
  return sum;
}

export interface OtherLoadResult {
  /**
   * Cores used by everything but the bench and its processes: the machine's user + nice +
   * system time (/proc/stat) minus the bench's own (its tree, reaped children included). Sees
   * short-lived processes (other people's test runs) that a per-process scan misses.
   */
  cores: number;
  /** Cores of the processes still alive at stop() that were not ours (what a scan sees). */
  seen: number;
  /** Cores stolen by the hypervisor (steal time). */
  steal: number;
  /** The busiest other processes alive at the end (`pid command: cores`). */
  top: string[];
}

/**
 * CPU used by other processes (not this one, not its descendants, not kernel threads) between
 * construction and `stop()`, in cores: a check that nobody else was busy while we measured.
 */
export class OtherLoad {
  readonly #t0 = performance.now();
  readonly #before = scanProcesses();
  readonly #machine0 = machineCpu();
  readonly #own0 = ownCpu(this.#before);

  stop(): OtherLoadResult {
    const after = scanProcesses();
    const machine = machineCpu();
    const ownUsed = ownCpu(after) - this.#own0;
    const own = ownPids(after);
    const secs = (performance.now() - this.#t0) / 1000;
    let cpu = 0;
    const each: Array<[number, number]> = [];
    for (const [pid, p] of after) {
      if (p.kernel || own.has(pid)) continue;
      const b = this.#before.get(pid);
      const used = b && b.start === p.start ? p.cpu - b.cpu : p.cpu;
      cpu += used;
      if (used > 0) each.push([pid, used]);
    }
    const top = each
      .sort((a, b) => b[1] - a[1])
      .slice(0, 3)
      .filter(([, used]) => used / secs >= 0.05)
      .map(([pid, used]) => `${pid} ${commandOf(pid)}: ${(used / secs).toFixed(2)}`);
    return {
      cores: Math.max(0, (machine.busy - this.#machine0.busy - ownUsed) / secs),
      seen: cpu / secs,
      steal: (machine.steal - this.#machine0.steal) / secs,
      top,
    };
  }
}

/** The repository's folder: written as `.` in command lines (the docs cite no local paths). */
const REPO = fileURLToPath(new URL('../..', import.meta.url)).replace(/\/$/, '');

function commandOf(pid: number): string {
  try {
    const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8')
      .split('\0')
      .filter(Boolean)
      .join(' ')
      .replaceAll(`${REPO}/`, './');
    return cmd.length > 80 ? `${cmd.slice(0, 77)}...` : cmd;
  } catch {
    return '(exited)';
  }
}

/** `root` and every process under it (a gateway's node:cluster workers), from /proc. */
export function treePids(root: number): number[] {
  const procs = scanProcesses();
  const tree = new Set<number>([root]);
  let grew = true;
  while (grew) {
    grew = false;
    for (const [pid, p] of procs) {
      if (!tree.has(pid) && tree.has(p.ppid)) {
        tree.add(pid);
        grew = true;
      }
    }
  }
  return [...tree];
}
