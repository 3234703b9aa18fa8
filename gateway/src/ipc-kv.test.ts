import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { MemoryKvStore } from '@dsm/kv';
import { describe, expect, it } from 'vitest';
import { serveKvOverIpc } from './ipc-kv.ts';

// The embedded cache of a multi-process gateway (ipc-kv.ts) over a real IPC channel: a forked
// child (ipc-kv.fixture.ts) plays the worker, this process the primary holding the store.

const FIXTURE = fileURLToPath(new URL('./ipc-kv.fixture.ts', import.meta.url));

describe('IpcKvStore ↔ serveKvOverIpc', () => {
  it("a worker's calls act on the primary's store with KvStore semantics, errors keep their codes, and fail at once when the primary is gone", async () => {
    const store = new MemoryKvStore();
    const child = fork(FIXTURE, [], {
      execArgv: ['--import', 'tsx'],
      stdio: ['ignore', 'pipe', 'inherit', 'ipc'],
    });
    let stdout = '';
    child.stdout?.on('data', (c: Buffer) => {
      stdout += c.toString();
    });
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    try {
      serveKvOverIpc(
        {
          on: (e, fn) => child.on(e, fn),
          send: (m) => child.send(m as object),
          isConnected: () => child.connected,
        },
        store,
      );
      const result = await new Promise<Record<string, unknown>>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('no result from the child within 30 s')), 30_000);
        child.on('message', (m: { type?: string; out?: Record<string, unknown> }) => {
          if (m.type === 'result') {
            clearTimeout(timer);
            resolve(m.out ?? {});
          }
        });
        void exited.then((code) => reject(new Error(`the child exited (${code}) before its result`)));
      });
      expect(result).toEqual({
        get: '1',
        missing: null,
        nx: [true, false],
        delIfValue: [false, true, null],
        incr: [2, 5],
        concurrent: '200',
        notInteger: { code: 'DSM_ERR_BAD_INPUT' },
        valueNotInteger: { code: 'DSM_ERR_BAD_INPUT' },
        badTtl: { code: 'DSM_ERR_BAD_INPUT' },
        expireMissing: false,
        expired: null,
        hugeKey: { code: 'DSM_ERR_BAD_INPUT' },
        deleted: null,
      });
      // the child's writes are in this process's store
      expect(await store.get('c')).toBe('200');
      expect(await store.get('n')).toBe('5');
      child.disconnect();
      expect(await exited).toBe(0);
      expect(JSON.parse(stdout.trim())).toEqual({ code: 'DSM_ERR_CACHE_UNAVAILABLE' });
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await store.close();
    }
  }, 60_000);
});
