import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

function run(cmd: string, args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { cwd: ROOT, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, out: `${stdout}${stderr}` });
    });
  });
}

describe('the repository', () => {
  it('type-checks under strict TypeScript', async () => {
    const r = await run(process.execPath, [
      'node_modules/typescript/bin/tsc',
      '--noEmit',
      '-p',
      'tsconfig.json',
    ]);
    expect(r.out).toBe('');
    expect(r.code).toBe(0);
  }, 120_000);

  it('passes the linter and formatter check', async () => {
    const r = await run(process.execPath, ['node_modules/@biomejs/biome/bin/biome', 'check', '.']);
    expect(r.code, r.out.slice(0, 4000)).toBe(0);
  }, 120_000);
});
