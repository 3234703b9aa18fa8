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
    // a removed (or never stored) file: "no such file", exit code 3, for every file verb
    for (const verb of ['stat', 'download', 'rm']) {
      const gone = await dsm([verb, id], env);
      expect(gone.stdout).toBe('');
      expect(gone.stderr).toBe(`dsm: no such file: ${id} (DSM_ERR_NOT_FOUND)\n`);
      expect(gone.code).toBe(3);
    }
    const goneJson = await dsm(['stat', id, '--json'], env);
    expect(goneJson.code).toBe(3);
    expect(goneJson.stdout).toBe('');
    expect(JSON.parse(goneJson.stderr)).toEqual({
      error: { code: 'DSM_ERR_NOT_FOUND', message: `no such file: ${id}` },
    });
  });

  it('prints one JSON document with --json for upload, stat, status and groups', async () => {
    const data = randomBytes(300_000);
    const src = join(t.dir, 'json.bin');
    writeFileSync(src, data);
    const up = await dsm(['upload', src, '--json', '--type', 'video/mp4'], env);
    expect(up.code).toBe(0);
    expect(up.stderr).toBe('');
    const u = JSON.parse(up.stdout) as Record<string, unknown>;
    expect(Object.keys(u).sort()).toEqual(['contentType', 'group', 'id', 'sha256', 'size']);
    expect(u).toMatchObject({
      group: 'group001',
      size: data.length,
      contentType: 'video/mp4',
      sha256: sha(data),
    });

    const st = await dsm(['stat', String(u.id), '--json'], env);
    expect(st.code).toBe(0);
    const s = JSON.parse(st.stdout) as Record<string, unknown>;
    expect(s).toMatchObject({
      id: u.id,
      appId: 'tnvideo',
      userId: 'tnv001',
      size: data.length,
      sha256: sha(data),
    });
    expect(s.contentType).toBe('video/mp4');
    expect(typeof s.fileId).toBe('string');
    expect(Date.parse(String(s.mtime))).toBeGreaterThan(Date.now() - 600_000);

    const status = await dsm(['status', '--json'], env);
    expect(status.code).toBe(0);
    const c = JSON.parse(status.stdout) as {
      time: string;
      groups: { name: string; storages: Record<string, unknown>[] }[];
    };
    expect(c.groups.map((g) => g.name)).toEqual(['group001']);
    const storages = c.groups[0]!.storages;
    expect(storages).toHaveLength(2);
    expect(storages.map((x) => x.address).sort()).toEqual(t.cluster.addresses('storage').slice().sort());
    for (const x of storages) {
      expect(x.state).toBe('ACTIVE');
      expect(x.freeBytes as number).toBeGreaterThan(0);
      expect((x.totalBytes as number) >= (x.freeBytes as number)).toBe(true);
      expect(Date.parse(String(x.beatTime))).toBeGreaterThan(Date.now() - 120_000);
    }

    const groups = await dsm(['groups', '--json'], env);
    expect(groups.code).toBe(0);
    const g = JSON.parse(groups.stdout) as { count: number; groups: Record<string, unknown>[] };
    expect(g.count).toBe(1);
    expect(g.groups[0]).toMatchObject({ name: 'group001', storageCount: 2, activeCount: 2 });
    // the text form stays the seed's
    const text = await dsm(['groups'], env);
    expect(text.stdout).toContain('COUNT OF ACTIVE STORAGES: 2');

    const down = await dsm(['status', '--json'], { DSM_TRACKERS: '127.0.0.1:1' });
    expect(down.code).toBe(1);
    expect(down.stdout).toBe('');
    expect((JSON.parse(down.stderr) as { error: { code: string } }).error.code).toBe('DSM_ERR_CONNECT');
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
