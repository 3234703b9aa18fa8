import { type ChildProcess, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { patternBytes, run, type Stack, startStack } from './test-support.ts';

// The executable, as users run it (a path to the bin file, not an import).
const DSM = fileURLToPath(new URL('../../cli/bin/dsm.js', import.meta.url));

let s: Stack;
let child: ChildProcess | undefined;
let url = '';
let configFile = '';

beforeAll(async () => {
  s = await startStack('sqlite+memory');
  configFile = join(s.dir, 'gateway.json');
  writeFileSync(
    configFile,
    JSON.stringify({
      listen: '127.0.0.1:0',
      trackers: s.cluster.addresses('tracker'),
      auth: { mode: 'jwt', hs256Secret: 'cli-test-secret-0123456789abcdefghij' },
      downloads: { default: 'signed', signingKeys: { main: 'cli-signing-key-0123456789abcdef' } },
    }),
  );
  child = spawn(process.execPath, [DSM, 'gateway', '--config', configFile], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, DSM_PARENT_PID: String(process.pid) },
  });
  const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('dsm gateway did not become ready')), 20_000);
    createInterface({ input: child!.stdout! }).on('line', (line) => {
      const msg = JSON.parse(line) as Record<string, unknown>;
      if (msg.ready) {
        clearTimeout(timer);
        resolve(msg);
      }
    });
    child!.once('exit', (code) => reject(new Error(`dsm gateway exited with ${code}`)));
  });
  expect(ready).toMatchObject({ ready: true, role: 'gateway' });
  url = String(ready.url);
});

afterAll(async () => {
  if (child && child.exitCode === null) {
    const exited = new Promise((r) => child!.once('exit', r));
    child.kill('SIGTERM');
    await exited;
  }
  await s?.stop();
});

describe('dsm gateway, dsm token, dsm sign', () => {
  it('runs the gateway from a config file; a minted token uploads, a signed URL downloads', async () => {
    const token = (
      await run(process.execPath, [DSM, 'token', '--config', configFile, '--app', 'tnvideo', '--user', 'u9'])
    ).stdout.trim();
    const data = patternBytes(50_000, 31);
    const denied = await fetch(`${url}/files`, { method: 'POST', body: data });
    expect(denied.status).toBe(401);
    const up = await fetch(`${url}/files`, {
      method: 'POST',
      body: data,
      headers: { authorization: `Bearer ${token}` },
    });
    expect(up.status).toBe(201);
    const { id, url: fileUrl } = (await up.json()) as { id: string; url: string };
    expect((await fetch(fileUrl)).status).toBe(401);

    const signed = (
      await run(process.execPath, [DSM, 'sign', id, '--config', configFile, '--base', url, '--ttl', '60'])
    ).stdout.trim();
    expect(signed).toMatch(/\?exp=\d+&kid=main&sig=[\w-]+$/);
    const r = await fetch(signed);
    expect(r.status).toBe(200);
    expect(Buffer.from(await r.arrayBuffer()).equals(data)).toBe(true);
  });
});
