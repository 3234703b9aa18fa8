import { execFile } from 'node:child_process';
import type { Logger } from '@dsm/common';

/**
 * Pending self-heal entries from `gluster volume heal VOL info`: the sum of "Number of entries"
 * over the bricks that answer. A brick that is down prints "Number of entries: -" and is not
 * counted (the entries waiting for it pile up on the other bricks as writes go on). -1 when
 * the output has no brick section at all (not a GlusterFS volume, glusterd not answering).
 */
export function parsePendingHeals(text: string): number {
  let n = 0;
  let seen = 0;
  for (const line of text.split('\n')) {
    const m = /^Number of entries:\s*(\S+)/.exec(line.trim());
    if (!m) continue;
    seen++;
    if (/^\d+$/.test(m[1] as string)) n += Number(m[1]);
  }
  return seen ? n : -1;
}

/**
 * Asks the local glusterd for the group volume's pending heals every `intervalMs`, so the
 * heartbeat can carry them (BEAT_EXT pendingHeals) and `dsm status` shows a group that is not
 * fully replicated. `value` is -1 until the first answer and whenever gluster fails.
 */
export class HealMonitor {
  value = -1;
  readonly #timer: ReturnType<typeof setInterval>;
  #busy = false;

  constructor(
    readonly volume: string,
    intervalMs: number,
    readonly log: Logger,
  ) {
    this.#timer = setInterval(() => void this.check(), intervalMs);
    this.#timer.unref();
    void this.check();
  }

  check(): Promise<number> {
    if (this.#busy) return Promise.resolve(this.value);
    this.#busy = true;
    return new Promise((resolve) => {
      execFile(
        'gluster',
        ['--mode=script', 'volume', 'heal', this.volume, 'info'],
        { timeout: 10_000, env: { ...process.env, PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin` } },
        (err, stdout) => {
          this.#busy = false;
          const v = err ? -1 : parsePendingHeals(stdout);
          if (v !== this.value) this.log.info({ volume: this.volume, pendingHeals: v }, 'pending heals');
          this.value = v;
          resolve(v);
        },
      );
    });
  }

  close(): void {
    clearInterval(this.#timer);
  }
}
