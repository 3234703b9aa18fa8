import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { LOG_BUFFER_BYTES } from './logger.ts';

const LOGGER = fileURLToPath(new URL('./logger.ts', import.meta.url));

/** Runs `body` (ESM, with `createLogger` imported) in a child Node; its stdio are pipes. */
function child(body: string) {
  const src = `import { createLogger } from ${JSON.stringify(LOGGER)};\n${body}`;
  return spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', src], {
    env: { ...process.env, DSM_LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

describe('createLogger (async stderr)', () => {
  it('writes every line, whole, from two loggers, even when the process exits at once after them', async () => {
    const c = child(`
      const a = createLogger('a');
      const b = createLogger('b');
      for (let i = 0; i < 2000; i++) (i % 2 ? a : b).info({ i, pad: 'x'.repeat(300) }, 'line');
      process.exit(0);
    `);
    let err = '';
    c.stderr.on('data', (d: Buffer) => {
      err += d.toString();
    });
    const code = await new Promise<number | null>((r) => c.on('close', r));
    expect(code).toBe(0);
    const lines = err.trim().split('\n');
    expect(lines).toHaveLength(2000);
    const seen = lines.map((l) => (JSON.parse(l) as { i: number; name: string }).i).sort((x, y) => x - y);
    expect(seen).toEqual(Array.from({ length: 2000 }, (_, i) => i));
  }, 30_000);

  it('keeps the process running, with a bounded buffer, while nothing reads its stderr', async () => {
    // 64 MiB of lines into a pipe nobody reads: a synchronous write would block the process at
    // the pipe's 64 KiB; here lines beyond LOG_BUFFER_BYTES are dropped
    const c = child(`
      const log = createLogger('flood');
      const rss0 = process.memoryUsage().rss;
      const t0 = Date.now();
      for (let i = 0; i < 64 * 1024; i++) log.info({ i, pad: 'y'.repeat(1000) }, 'flood');
      await new Promise((r) => setTimeout(r, 200));
      process.stdout.write(JSON.stringify({ ms: Date.now() - t0, grew: process.memoryUsage().rss - rss0 }) + '\\n');
    `);
    c.stderr.pause(); // never read
    try {
      const out = await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('the child was blocked by its stderr')), 20_000);
        let s = '';
        c.stdout.on('data', (d: Buffer) => {
          s += d.toString();
          if (s.includes('\n')) {
            clearTimeout(timer);
            resolve(s);
          }
        });
      });
      const r = JSON.parse(out) as { ms: number; grew: number };
      // far less than the 64 MiB logged: the buffer's bound plus the heap's own growth
      expect(r.grew).toBeLessThan(LOG_BUFFER_BYTES + 40 * 1024 * 1024);
    } finally {
      c.kill('SIGKILL');
    }
  }, 30_000);
});
