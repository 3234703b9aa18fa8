import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';

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

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/** A base port with `n` free consecutive loopback ports (away from the defaults of `dsm up`). */
export async function freePortRange(n: number): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 30000 + Math.floor(Math.random() * 25000);
    let ok = true;
    for (let i = 0; i < n && ok; i++) ok = await canListen(base + i);
    if (ok) return base;
  }
  throw new Error('no free port range found');
}
