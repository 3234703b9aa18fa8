import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger } from '@dsm/common';
import { until } from '@dsm/testkit';
import { afterAll, describe, expect, it } from 'vitest';
import { StoreProbe } from './store-probe.ts';

const log = createLogger('store-probe-test');
const dir = mkdtempSync(join(tmpdir(), 'dsm-probe-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('store write probe', () => {
  it('a failing write marks the store not writable; a passing one marks it writable again', async () => {
    const store = join(dir, 'a');
    const changes: boolean[] = [];
    const probe = new StoreProbe([join(store, 'x.probe')], 60_000, 1000, log, (w) => changes.push(w));
    try {
      expect(await probe.check()).toBe(false); // the folder does not exist: ENOENT
      expect(probe.reason).toContain('ENOENT');
      mkdirSync(store);
      expect(await probe.check()).toBe(true);
      expect(probe.reason).toBeNull();
      expect(changes).toEqual([false, true]);
      expect(readdirSync(store)).toEqual([]); // the probe file is gone again
    } finally {
      probe.close();
    }
  });

  it('a deadline timer that fires before the deadline by the wall clock waits the rest (the loop clock lags Date.now())', async () => {
    const store = join(dir, 'c');
    mkdirSync(store);
    const fifo = join(store, 'x.probe');
    execFileSync('mkfifo', [fifo]);
    const probe = new StoreProbe([fifo], 60_000, 300, log);
    try {
      // the probe starts 200 ms "later" by Date.now() than its timer does: the 300 ms timer
      // fires 100 ms before the deadline
      const t0 = Date.now();
      const first = probe.check(t0 + 200);
      await until(() => !probe.writable, 3000, 20, 'the probe to time out');
      expect(Date.now() - t0).toBeGreaterThanOrEqual(490);
      const reader = await open(fifo, 'r');
      await first;
      await reader.close();
    } finally {
      probe.close();
    }
  });

  it('a write that does not finish in time marks the store not writable (a stalled volume)', async () => {
    const store = join(dir, 'b');
    mkdirSync(store);
    // opening a FIFO for writing blocks until a reader comes: a write that hangs
    const fifo = join(store, 'x.probe');
    execFileSync('mkfifo', [fifo]);
    const changes: boolean[] = [];
    const probe = new StoreProbe([fifo], 60_000, 300, log, (w) => changes.push(w));
    try {
      const t0 = Date.now();
      const first = probe.check();
      await until(() => !probe.writable, 3000, 20, 'the probe to time out');
      expect(Date.now() - t0).toBeGreaterThanOrEqual(290);
      expect(probe.reason).toContain('has not finished after 300 ms');
      expect(await probe.check()).toBe(false); // still running: no second probe on top
      // the volume answers again: the hung write goes through (and fails: no fsync on a FIFO)
      const reader = await open(fifo, 'r');
      await first;
      await reader.close();
      rmSync(fifo);
      expect(await probe.check()).toBe(true);
      expect(changes).toEqual([false, true]);
      expect(existsSync(fifo)).toBe(false);
    } finally {
      probe.close();
    }
  });
});
