import { readFileSync } from 'node:fs';

/** Resident set size of a process in bytes (VmRSS in /proc/<pid>/status), or null if gone. */
export function readRss(pid: number): number | null {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

/** Samples the RSS of some processes every `intervalMs` and keeps the peak of their sum. */
export class RssSampler {
  readonly #pids: number[];
  readonly #timer: ReturnType<typeof setInterval>;
  #peak = 0;
  #samples = 0;

  constructor(pids: number[], intervalMs = 100) {
    this.#pids = pids;
    this.#sample();
    this.#timer = setInterval(() => this.#sample(), intervalMs);
  }

  #sample(): void {
    let sum = 0;
    for (const pid of this.#pids) sum += readRss(pid) ?? 0;
    this.#samples++;
    if (sum > this.#peak) this.#peak = sum;
  }

  /** Takes a last sample and returns the peak (bytes) and how many samples it saw. */
  stop(): { peak: number; samples: number } {
    clearInterval(this.#timer);
    this.#sample();
    return { peak: this.#peak, samples: this.#samples };
  }
}

/** Runs `fn` while sampling; returns its result and the peak RSS. */
export async function withRss<T>(
  pids: number[],
  fn: () => Promise<T>,
): Promise<{ result: T; peakRss: number }> {
  const s = new RssSampler(pids);
  try {
    const result = await fn();
    return { result, peakRss: s.stop().peak };
  } catch (e) {
    s.stop();
    throw e;
  }
}
