import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mintToken, signUrl, TokenVerifier, verifySignedUrl } from './auth.ts';
import { parseGatewayConfig } from './config.ts';
import type { RunningGateway } from './node.ts';
import { type Stack, startStack } from './test-support.ts';

// Production guard rails (issue 8, part 4): what a gateway refuses to do or to start with.

const run = promisify(execFile);
const REPO = join(import.meta.dirname, '..', '..');
const DSM = join(REPO, 'cli', 'src', 'main.ts');
const K1 = 'k1-secret-0123456789abcdefghijklmnop';
const K2 = 'k2-secret-0123456789abcdefghijklmnop';

describe('auth.mode none on a public address', () => {
  it('is refused on a non-loopback listen address, naming auth.mode', () => {
    for (const listen of ['0.0.0.0:8080', '[::]:8080', '10.0.0.5:8080', 'media.example.com:80']) {
      expect(() => parseGatewayConfig({ listen }), listen).toThrow(/auth.*mode|"none" is refused/);
    }
    for (const listen of ['127.0.0.1:8080', '127.8.9.10:1', 'localhost:8080', '[::1]:8080']) {
      expect(parseGatewayConfig({ listen }).auth.mode, listen).toBe('none');
    }
  });

  it('starts on a public address with mode jwt, or when anonymous uploads are asked for', () => {
    expect(
      parseGatewayConfig({ listen: '0.0.0.0:8080', auth: { mode: 'jwt', hs256Keys: { k1: K1 } } }).listen,
    ).toBe('0.0.0.0:8080');
    expect(parseGatewayConfig({ listen: '0.0.0.0:8080', auth: { allowAnonymousUploads: true } }).listen).toBe(
      '0.0.0.0:8080',
    );
  });

  it('`dsm gateway` on 0.0.0.0 with mode none stops at start-up with one line naming the key', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'dsm-guard-'));
    try {
      const file = join(dir, 'gateway.json');
      writeFileSync(file, JSON.stringify({ listen: '0.0.0.0:0' }));
      const r = await run(process.execPath, ['--import', 'tsx', DSM, 'gateway', '--config', file], {
        cwd: REPO,
        timeout: 30_000,
      }).then(
        () => ({ code: 0, stderr: '' }),
        (e: { code: number; stderr: string }) => e,
      );
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/auth\.mode/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('anonymous deletes', () => {
  it('mode none: uploads are anonymous, deletes are refused (403)', async () => {
    const v = new TokenVerifier(parseGatewayConfig({}).auth);
    expect(await v.principal(undefined)).toEqual({ appId: 'tnvideo', userId: 'tnv001' });
    await expect(v.principal(undefined, 'delete')).rejects.toMatchObject({
      status: 403,
      code: 'DSM_ERR_FORBIDDEN',
    });
  });

  it('mode jwt with allowAnonymousUploads: uploads without a token, deletes only with one', async () => {
    const v = new TokenVerifier(
      parseGatewayConfig({ auth: { mode: 'jwt', hs256Keys: { k1: K1 }, allowAnonymousUploads: true } }).auth,
    );
    expect(await v.principal(undefined, 'upload')).toEqual({ appId: 'tnvideo', userId: 'tnv001' });
    await expect(v.principal(undefined, 'delete')).rejects.toMatchObject({ status: 401 });
    const t = await mintToken({ secret: K1, kid: 'k1', app: 'tnvideo', sub: 'tnv001' });
    expect(await v.principal(`Bearer ${t}`, 'delete')).toEqual({ appId: 'tnvideo', userId: 'tnv001' });
  });
});

describe('HS256 key sets', () => {
  const cfg = (keys: Record<string, string>, extra: object = {}) =>
    new TokenVerifier(parseGatewayConfig({ auth: { mode: 'jwt', hs256Keys: keys, ...extra } }).auth);
  const token = (secret: string, kid?: string) =>
    mintToken({ secret, app: 'tnvideo', sub: 'u1', ...(kid ? { kid } : {}) });

  it('rotates without downtime: k1 alone, then k1 and k2 both valid, then k1 refused', async () => {
    const old = await token(K1, 'k1');
    const fresh = await token(K2, 'k2');
    const before = cfg({ k1: K1 });
    expect(await before.principal(`Bearer ${old}`)).toEqual({ appId: 'tnvideo', userId: 'u1' });
    await expect(before.principal(`Bearer ${fresh}`)).rejects.toMatchObject({ status: 401 });
    const during = cfg({ k1: K1, k2: K2 });
    expect(await during.principal(`Bearer ${old}`)).toMatchObject({ userId: 'u1' });
    expect(await during.principal(`Bearer ${fresh}`)).toMatchObject({ userId: 'u1' });
    const after = cfg({ k2: K2 });
    await expect(after.principal(`Bearer ${old}`)).rejects.toMatchObject({
      status: 401,
      extra: { reason: 'invalid' },
    });
    expect(await after.principal(`Bearer ${fresh}`)).toMatchObject({ userId: 'u1' });
  });

  it('refuses a token that names no kid, an unknown kid, a prototype name, or the wrong key for its kid', async () => {
    const v = cfg({ k1: K1, k2: K2 });
    for (const t of [
      await token(K1),
      await token(K1, 'k3'),
      await token(K1, 'constructor'),
      await token(K1, '__proto__'),
      await token(K1, 'k2'),
    ]) {
      await expect(v.principal(`Bearer ${t}`)).rejects.toMatchObject({
        status: 401,
        extra: { reason: 'invalid' },
      });
    }
  });

  it('keeps the legacy hs256Secret working (key id "default"; tokens without kid)', async () => {
    const v = new TokenVerifier(parseGatewayConfig({ auth: { mode: 'jwt', hs256Secret: K1 } }).auth);
    expect(await v.principal(`Bearer ${await token(K1)}`)).toMatchObject({ userId: 'u1' });
    expect(await v.principal(`Bearer ${await token(K1, 'default')}`)).toMatchObject({ userId: 'u1' });
    expect(() => parseGatewayConfig({ auth: { hs256Keys: { k1: 'short' } } })).toThrow(
      /hs256Keys.*k1|32 bytes/,
    );
    expect(() => parseGatewayConfig({ auth: { hs256Keys: { k1: K1 }, hs256KeyId: 'k9' } })).toThrow(
      /hs256KeyId/,
    );
  });
});

describe('signed URL lifetime', () => {
  const keys = { k1: 's'.repeat(32) };
  const DAY = 24 * 3600;

  it('refuses at verify time a URL whose exp lies further ahead than the maximum', async () => {
    const now = Math.floor(Date.now() / 1000);
    const long = await signUrl('/files/abc', { kid: 'k1', secret: keys.k1, exp: now + 30 * DAY });
    const q = Object.fromEntries(new URL(long, 'http://x').searchParams);
    await expect(verifySignedUrl('/files/abc', q, keys, 'k1', now, 7 * DAY)).rejects.toMatchObject({
      status: 401,
    });
    const ok = await signUrl('/files/abc', { kid: 'k1', secret: keys.k1, exp: now + 6 * DAY });
    await verifySignedUrl(
      '/files/abc',
      Object.fromEntries(new URL(ok, 'http://x').searchParams),
      keys,
      'k1',
      now,
      7 * DAY,
    );
    expect(parseGatewayConfig({}).downloads.maxSignedUrlLifetimeSec).toBe(7 * DAY);
  });

  it('refuses an unknown or prototype key id', async () => {
    const url = await signUrl('/files/abc', { kid: 'k1', secret: keys.k1, expiresInSec: 60 });
    const q = Object.fromEntries(new URL(url, 'http://x').searchParams);
    for (const kid of ['constructor', '__proto__', 'toString', 'k2']) {
      await expect(verifySignedUrl('/files/abc', { ...q, kid }, keys, 'k1')).rejects.toMatchObject({
        status: 401,
      });
    }
  });

  it('`dsm sign` refuses to make a URL that lives longer than the config allows', async () => {
    await expect(
      signUrl('/files/abc', { kid: 'k1', secret: keys.k1, expiresInSec: 8 * DAY, maxLifetimeSec: 7 * DAY }),
    ).rejects.toThrow(/at most/);
    const dir = mkdtempSync(join(tmpdir(), 'dsm-sign-'));
    try {
      const file = join(dir, 'gateway.json');
      writeFileSync(
        file,
        JSON.stringify({ downloads: { signingKeys: keys, maxSignedUrlLifetimeSec: 3600 } }),
      );
      const args = ['--import', 'tsx', DSM, 'sign', 'AQd0bnZpZGVv', '--config', file];
      const refused = await run(process.execPath, [...args, '--ttl', '7200'], { cwd: REPO }).then(
        () => ({ code: 0, stderr: '' }),
        (e: { code: number; stderr: string }) => e,
      );
      expect(refused.code).toBe(2);
      expect(refused.stderr).toMatch(/maxSignedUrlLifetimeSec/);
      const ok = await run(process.execPath, [...args, '--ttl', '600'], { cwd: REPO });
      expect(ok.stdout).toMatch(/sig=/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('operator endpoints', () => {
  let s: Stack;
  let withToken: RunningGateway;
  const ADMIN = 'admin-token-0123456789abcdefghijklmn';
  beforeAll(async () => {
    s = await startStack('sqlite+memory');
    withToken = await s.startGateway({ admin: { token: ADMIN } });
  });
  afterAll(async () => {
    await s?.stop();
  });

  it('the public /readyz says only ready; /metrics is not public', async () => {
    const r = await fetch(`${s.gateway.url}/readyz`);
    expect(r.status).toBe(200);
    expect(await r.json()).toEqual({ status: 'ready' });
    expect((await fetch(`${s.gateway.url}/metrics`)).status).toBe(404);
    const lonely = await s.startGateway({ trackers: ['127.0.0.1:1'] });
    const down = await fetch(`${lonely.url}/readyz`);
    expect(down.status).toBe(503);
    const p = (await down.json()) as Record<string, unknown>;
    expect(p.code).toBe('DSM_ERR_NOT_READY');
    expect(p).not.toHaveProperty('trackers');
    expect(JSON.stringify(p)).not.toContain('127.0.0.1:1');
  });

  it('the admin listener serves /metrics and the details of /readyz', async () => {
    expect(s.gateway.adminUrl).toBeDefined();
    const r = await fetch(`${s.gateway.adminUrl}/readyz`);
    expect(await r.json()).toMatchObject({ status: 'ready', trackers: [{ ok: true }], cache: { ok: true } });
    expect(await (await fetch(`${s.gateway.adminUrl}/metrics`)).text()).toContain(
      'dsm_gateway_requests_total',
    );
  });

  it('with admin.token the public listener serves them to the token only', async () => {
    expect((await fetch(`${withToken.url}/metrics`)).status).toBe(404);
    const bad = { authorization: `Bearer ${ADMIN.slice(0, -1)}x` };
    expect((await fetch(`${withToken.url}/metrics`, { headers: bad })).status).toBe(404);
    const good = { authorization: `Bearer ${ADMIN}` };
    expect((await fetch(`${withToken.url}/metrics`, { headers: good })).status).toBe(200);
    expect(await (await fetch(`${withToken.url}/readyz`, { headers: good })).json()).toMatchObject({
      trackers: [{ ok: true }],
    });
  });
});
