import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestCluster, type TestCluster } from './helpers.ts';

const DSM = fileURLToPath(new URL('../../cli/bin/dsm.js', import.meta.url));

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function dsm(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [DSM, ...args],
      { env: { ...process.env, ...env }, maxBuffer: 64 * 1024 * 1024, encoding: 'buffer' },
      (err, stdout, stderr) => {
        const code = err ? ((err as { code?: number }).code ?? 1) : 0;
        resolve({
          code: typeof code === 'number' ? code : 1,
          stdout: stdout.toString('latin1'),
          stderr: stderr.toString(),
        });
      },
    );
  });
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('dsm command line against a running cluster', () => {
  let t: TestCluster;
  let env: Record<string, string>;
  beforeAll(async () => {
    t = await startTestCluster('sqlite+memory', { trackers: 2, groups: ['group001'], storagesPerGroup: 2 });
    await t.waitActive(2);
    env = { DSM_TRACKERS: t.cluster.addresses('tracker').join(';') };
  }, 90_000);
  afterAll(async () => {
    await t?.stop();
  });

  it('uploads, stats, downloads (whole and a range) and removes a file', async () => {
    const data = randomBytes(5 * 1024 * 1024 + 3);
    const src = join(t.dir, 'in.bin');
    writeFileSync(src, data);
    const up = await dsm(['upload', src, '--user', 'cli-user', '--type', 'application/x-test'], env);
    expect(up.stderr).toContain('uploaded');
    expect(up.code).toBe(0);
    const id = up.stdout.trim().split('\n').pop()!;
    expect(id).toMatch(/^[A-Za-z0-9_-]+$/);

    const st = await dsm(['stat', id], env);
    expect(st.code).toBe(0);
    expect(st.stdout).toContain(`size   ${data.length}`);
    expect(st.stdout).toContain(`sha256 ${sha(data)}`);
    expect(st.stdout).toContain('type   application/x-test');

    const out = join(t.dir, 'out.bin');
    const down = await dsm(['download', id, '-o', out], env);
    expect(down.code).toBe(0);
    expect(sha(readFileSync(out))).toBe(sha(data));

    const part = await dsm(['download', id, '--range', '100-199'], env);
    expect(part.code).toBe(0);
    expect(Buffer.compare(Buffer.from(part.stdout, 'latin1'), data.subarray(100, 200))).toBe(0);
    const tail = await dsm(['download', id, '--range', '-10'], env);
    expect(Buffer.compare(Buffer.from(tail.stdout, 'latin1'), data.subarray(data.length - 10))).toBe(0);

    const rm = await dsm(['rm', id], env);
    expect(rm.code).toBe(0);
    const gone = await dsm(['stat', id], env);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toMatch(/^dsm: .*Read Database Fail.*\(DSM_ERR_NOT_FOUND\)\n$/);
  });

  it('shows every storage as active in dsm status', async () => {
    const s = await dsm(['status'], env);
    expect(s.code).toBe(0);
    expect(s.stdout).toContain('2 storage(s), 2 active');
    expect(s.stdout.match(/ACTIVE/g)?.length).toBe(2);
  });

  it('fails with one clear line and a non-zero exit code', async () => {
    const bad = await dsm(['stat', 'not-a-dsm-id!'], env);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toBe('dsm: not a dsm file id: "not-a-dsm-id!" (DSM_ERR_BAD_INPUT)\n');
    const unknown = await dsm(['frobnicate'], env);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('unknown command "frobnicate"');
    const missing = await dsm(['upload', join(t.dir, 'does-not-exist')], env);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr.split('\n').filter(Boolean)).toHaveLength(1);
    const down = await dsm(['status'], { DSM_TRACKERS: '127.0.0.1:1' });
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(/^dsm: cannot connect to 127\.0\.0\.1:1.*\(DSM_ERR_CONNECT\)\n$/);
  });
});
