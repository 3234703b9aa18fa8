import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  glusterGroupSteps,
  HaConfigError,
  PING_SCRIPT,
  parseHealInfo,
  pingCheckCommand,
  renderKeepalivedConf,
  renderVipPair,
} from './index.ts';

const run = promisify(execFile);
const SCRIPTS = fileURLToPath(new URL('../scripts/', import.meta.url));
const PATH = `${process.env.PATH}:/usr/sbin:/sbin`;
let dir: string;

beforeAll(async () => {
  // a missing keepalived FAILS here (ensure-deps.sh exits 1 naming the package): never a skip
  await run(join(SCRIPTS, 'ensure-deps.sh'), ['keepalived'], { env: { ...process.env, PATH } }).catch((e) => {
    throw new Error(`HA dependencies missing: ${e.stderr || e.message}`);
  });
  dir = mkdtempSync(join(tmpdir(), 'dsm-ha-render-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function keepalivedAccepts(name: string, conf: string): Promise<void> {
  const f = join(dir, `${name}.conf`);
  writeFileSync(f, conf);
  const r = await run('keepalived', ['-t', '-f', f], { env: { ...process.env, PATH } }).catch(
    (e: { code?: number; stderr?: string; stdout?: string }) => e,
  );
  if ('code' in r && r.code)
    throw new Error(`keepalived -t rejected ${name} (exit ${r.code}): ${r.stderr}${r.stdout}\n${conf}`);
}

describe('keepalived.conf renderer', () => {
  const pairs = [
    { role: 'tracker', vip: '10.213.0.100/24', vrid: 51, port: 21000, reply: 100 },
    { role: 'id', vip: '10.213.0.101/24', vrid: 52, port: 22000, reply: 101 },
  ];
  for (const p of pairs) {
    for (const variant of [
      { advertIntMs: 100, unicast: false, preemptDelayMs: undefined },
      { advertIntMs: 1000, unicast: false, preemptDelayMs: 0 },
      { advertIntMs: 250, unicast: true, preemptDelayMs: 1500 },
    ]) {
      const delay = variant.preemptDelayMs ?? 5000;
      it(`keepalived -t accepts the ${p.role} pair (advert ${variant.advertIntMs} ms${variant.unicast ? ', unicast' : ''}, preempt delay ${delay} ms)`, async () => {
        const confs = renderVipPair({
          role: p.role,
          vip: p.vip,
          interface: 'eth0',
          virtualRouterId: p.vrid,
          nodes: [
            { name: `${p.role}1`, address: '10.213.0.11' },
            { name: `${p.role}2`, address: '10.213.0.12' },
          ],
          checkAddress: `127.0.0.1:${p.port}`,
          replyCommand: p.reply,
          advertIntMs: variant.advertIntMs,
          unicast: variant.unicast,
          trackFileDir: dir,
          preemptDelayMs: variant.preemptDelayMs,
        });
        expect(confs).toHaveLength(2);
        // keepalived honours preempt_delay only on an instance that starts as BACKUP
        expect(confs[0]!.conf).toContain(delay ? 'state BACKUP' : 'state MASTER');
        for (const c of confs) expect(c.conf.includes(`preempt_delay ${delay / 1000}\n`)).toBe(delay > 0);
        if (!delay) expect(confs[0]!.conf).not.toContain('preempt_delay');
        expect(confs[0]!.conf).toContain('priority 150');
        expect(confs[1]!.conf).toContain('state BACKUP');
        expect(confs[1]!.conf).toContain('priority 100');
        expect(confs[0]!.conf).toContain(`${p.vip} dev eth0`);
        expect(confs[0]!.conf).toContain(`${PING_SCRIPT} 127.0.0.1:${p.port} ${p.reply} 800`);
        expect(confs[0]!.conf.includes('vrrp_version 3')).toBe(variant.advertIntMs < 1000);
        if (variant.unicast) expect(confs[0]!.conf).toMatch(/unicast_peer \{\n\s+10\.213\.0\.12\n/);
        for (const c of confs) await keepalivedAccepts(`${p.role}-${c.name}-${variant.advertIntMs}`, c.conf);
      });
    }
  }

  it('renders the fast advert interval as VRRPv3 centiseconds', () => {
    const conf = renderKeepalivedConf({
      instance: 'x',
      interface: 'eth0',
      vip: '10.213.0.100/24',
      virtualRouterId: 9,
      priority: 100,
      state: 'BACKUP',
      advertIntMs: 250,
      trackScript: { cmd: '/bin/true' },
      nopreempt: true,
    });
    expect(conf).toContain('advert_int 0.25');
    expect(conf).toContain('nopreempt');
  });

  it('refuses what keepalived would reject or misread', () => {
    const base = {
      instance: 'x',
      interface: 'eth0',
      vip: '10.213.0.100/24',
      virtualRouterId: 9,
      priority: 100,
      state: 'MASTER' as const,
      advertIntMs: 100,
      trackScript: { cmd: '/bin/true' },
    };
    expect(() =>
      renderKeepalivedConf({ ...base, trackScript: { cmd: '/bin/true', intervalS: 0.2 } }),
    ).toThrow(HaConfigError);
    expect(() => renderKeepalivedConf({ ...base, trackScript: { cmd: 'true' } })).toThrow(/absolute/);
    expect(() => renderKeepalivedConf({ ...base, trackScript: { cmd: '/bin/sh -c "x"' } })).toThrow(/quotes/);
    expect(() => renderKeepalivedConf({ ...base, vip: '10.213.0.300/24' })).toThrow(/IPv4/);
    expect(() => renderKeepalivedConf({ ...base, priority: 255 })).toThrow(/priority/);
    expect(() => renderKeepalivedConf({ ...base, advertIntMs: 105 })).toThrow(/multiple of 10/);
    expect(() => renderKeepalivedConf({ ...base, preemptDelayMs: 1000 })).toThrow(/BACKUP/);
    expect(() =>
      renderKeepalivedConf({ ...base, state: 'BACKUP', preemptDelayMs: 1000, nopreempt: true }),
    ).toThrow(/exclude/);
  });
});

describe('PING track script', () => {
  let server: Server;
  let port = 0;
  let answer: 'ok' | 'error' | 'silent' | 'body' | 'short' = 'ok';
  beforeAll(async () => {
    server = createServer((s) => {
      s.on('error', () => {}); // a check killed at its time limit resets the connection
      s.once('data', () => {
        if (answer === 'silent') return;
        const f = Buffer.alloc(answer === 'body' ? 12 : 10);
        if (answer === 'body') f.writeBigInt64BE(2n, 0);
        f.writeUInt8(100, 8);
        f.writeUInt8(answer === 'ok' ? 0 : 0xfd, 9);
        s.end(answer === 'short' ? f.subarray(0, 9) : f);
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as { port: number }).port;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  const check = async (reply: number) => {
    const [cmd, ...args] = pingCheckCommand({
      address: `127.0.0.1:${port}`,
      replyCommand: reply,
      timeoutMs: 500,
    }).split(' ');
    return run(cmd as string, args).then(
      () => 0,
      (e: { code: number }) => e.code,
    );
  };

  it('exits 0 only for an empty OK reply with the expected command', async () => {
    answer = 'ok';
    expect(await check(100)).toBe(0);
    expect(await check(101)).toBe(1); // a tracker answering where an id server is expected
    answer = 'error';
    expect(await check(100)).toBe(1);
    answer = 'silent';
    const t0 = Date.now();
    expect(await check(100)).toBe(1);
    expect(Date.now() - t0).toBeLessThan(1500);
    answer = 'body';
    expect(await check(100)).toBe(1);
    answer = 'short'; // closed after 9 bytes
    expect(await check(100)).toBe(1);
  });

  it('accepts any node kind when no reply command is given', async () => {
    answer = 'ok';
    const [cmd, ...args] = pingCheckCommand({ address: `127.0.0.1:${port}`, timeoutMs: 500 }).split(' ');
    expect(args).toEqual([`127.0.0.1:${port}`, '0', '500']);
    await expect(run(cmd as string, args)).resolves.toBeDefined();
    await expect(run(cmd as string, [`127.0.0.1:${port}`])).resolves.toBeDefined();
  });

  it('exits 2 on a malformed address', async () => {
    await expect(run(PING_SCRIPT, ['127.0.0.1'])).rejects.toMatchObject({ code: 2 });
    await expect(run(PING_SCRIPT, ['127.0.0.1:80', 'x'])).rejects.toMatchObject({ code: 2 });
  });

  it('exits 1 when nothing listens', async () => {
    const [cmd, ...args] = pingCheckCommand({ address: '127.0.0.1:1', timeoutMs: 500 }).split(' ');
    await expect(run(cmd as string, args)).rejects.toMatchObject({ code: 1 });
  });
});

describe('GlusterFS group steps', () => {
  const hosts = ['10.213.0.15', '10.213.0.16', '10.213.0.17'];
  const bricks = hosts.map((h, i) => `${h}:/srv/b${i}/brick`);

  it('replica 3: probe, create, quorum + ping-timeout + metadata cache, start, mount', () => {
    const s = glusterGroupSteps({
      volume: 'group001',
      hosts,
      bricks,
      replica: 3,
      mountPoint: '/m',
      force: true,
    });
    const lines = s.commands.map((c) => c.join(' '));
    expect(lines).toEqual([
      'gluster --mode=script peer probe 10.213.0.16',
      'gluster --mode=script peer probe 10.213.0.17',
      `gluster --mode=script volume create group001 replica 3 ${bricks.join(' ')} force`,
      'gluster --mode=script volume set group001 cluster.quorum-type auto',
      'gluster --mode=script volume set group001 network.ping-timeout 5',
      'gluster --mode=script volume set group001 performance.md-cache-timeout 0',
      'gluster --mode=script volume set group001 cluster.self-heal-daemon on',
      'gluster --mode=script volume start group001',
    ]);
    expect(s.mount.argv).toEqual([
      'mount',
      '-t',
      'glusterfs',
      '-o',
      'backup-volfile-servers=10.213.0.16:10.213.0.17,attribute-timeout=0,entry-timeout=0',
      '10.213.0.15:/group001',
      '/m',
    ]);
  });

  it('replica 2 + arbiter, options overridable', () => {
    const s = glusterGroupSteps({
      volume: 'g2',
      hosts,
      bricks,
      replica: { replica: 2, arbiter: 1 },
      pingTimeoutS: 3,
      options: { 'performance.md-cache-timeout': '1' },
    });
    expect(s.commands[2]).toEqual([
      'gluster',
      '--mode=script',
      'volume',
      'create',
      'g2',
      'replica',
      '2',
      'arbiter',
      '1',
      ...bricks,
    ]);
    expect(s.options).toContainEqual(['network.ping-timeout', '3']);
    expect(s.options).toContainEqual(['performance.md-cache-timeout', '1']);
  });

  it('refuses layouts that cannot keep a quorum or that gluster rejects', () => {
    expect(() =>
      glusterGroupSteps({ volume: 'v', hosts: hosts.slice(0, 2), bricks: bricks.slice(0, 2), replica: 3 }),
    ).toThrow(/3 hosts/);
    expect(() =>
      glusterGroupSteps({ volume: 'v', hosts, bricks: [...bricks.slice(0, 2), '127.0.0.1:/x'], replica: 3 }),
    ).toThrow(/not on host/);
    expect(() => glusterGroupSteps({ volume: 'v v', hosts, bricks, replica: 3 })).toThrow(/volume/);
  });

  it('parses heal info, treating a disconnected brick as unknown (-1)', () => {
    const ok =
      'Brick a:/b\nStatus: Connected\nNumber of entries: 2\n\nBrick b:/b\nStatus: Connected\nNumber of entries: 1\n';
    expect(parseHealInfo(ok)).toBe(3);
    expect(
      parseHealInfo('Brick a:/b\nStatus: Transport endpoint is not connected\nNumber of entries: -\n'),
    ).toBe(-1);
    expect(parseHealInfo('')).toBe(-1);
  });
});
