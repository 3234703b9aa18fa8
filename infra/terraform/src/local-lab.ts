/**
 * Brings the HA tests' namespace lab up as the local environment (called by
 * scripts/local-lab.sh, which Terraform's local environment runs on apply and destroy):
 *
 *   up      check that rendered/local is current and is what the lab starts, then start the lab
 *           in the background (a `serve` process holds it) and smoke-test it through the VIPs
 *   down    stop it (the serve process tears the lab down: processes, mounts, namespaces)
 *   status  is it up, and its endpoints
 *
 * Needs root, GlusterFS, keepalived and iproute2 (infra/ha/scripts/ensure-deps.sh). The lab uses
 * fixed names (/tmp/dsm-halab, dsm-* namespaces): not while the HA tests run.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadEnvSpec, RENDERED_DIR } from './inputs.ts';
import { loadLab, verifyAgainstLab } from './lab-parity.ts';
import { renderEnvironment } from './render-environment.ts';

const STATE = '/tmp/dsm-tf-local';
const PID = join(STATE, 'lab.pid');
const READY = join(STATE, 'ready.json');
const LOG = join(STATE, 'lab.log');
const out = (s: string) => process.stdout.write(`${s}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function alive(pid: number): boolean {
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '')[0];
    return st !== 'Z' && st !== 'X';
  } catch {
    return false;
  }
}

const runningPid = (): number => {
  const pid = existsSync(PID) ? Number(readFileSync(PID, 'utf8')) : 0;
  return pid && alive(pid) ? pid : 0;
};

function listFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? listFiles(join(dir, e.name)) : [join(dir, e.name)],
  );
}

/** The checks `up` makes before it starts anything; returns the problems found. */
export async function preflight(renderedDir = process.env.DSM_RENDERED_DIR || join(RENDERED_DIR, 'local')) {
  const problems: string[] = [];
  const { spec, inputSha256 } = loadEnvSpec('local');
  const r = renderEnvironment(spec, inputSha256);
  // 1. the folder Terraform read is exactly what the renderer makes from dsm.json now
  if (!existsSync(renderedDir))
    problems.push(`${renderedDir} does not exist: run npm run render -w @dsm/terraform`);
  else {
    const onDisk = new Set(listFiles(renderedDir).map((f) => relative(renderedDir, f)));
    for (const [rel, content] of r.files) {
      if (!onDisk.has(rel)) problems.push(`${rel} is missing from ${renderedDir}`);
      else if (readFileSync(join(renderedDir, rel), 'utf8') !== content) problems.push(`${rel} is stale`);
      onDisk.delete(rel);
    }
    for (const rel of onDisk) problems.push(`${rel} in ${renderedDir} is not rendered any more`);
  }
  // 2. what was rendered is what the lab starts
  problems.push(...(await verifyAgainstLab(r)).map((d) => `lab: ${d}`));
  // 3. the modules' outputs (passed by Terraform) agree
  const expect: Record<string, string> = {
    DSM_TRACKER_ENDPOINT: r.manifest.trackers.endpoint,
    DSM_ID_ENDPOINT: r.manifest.idServers.endpoint,
    DSM_STORAGE_ADDRESSES: Object.values(r.manifest.storageGroups)
      .flatMap((g) => g.storageAddresses)
      .sort()
      .join(','),
    DSM_MOUNT_POINTS: Object.values(r.manifest.storageGroups)
      .map((g) => g.mountPoint)
      .join(','),
  };
  for (const [k, v] of Object.entries(expect)) {
    const got = process.env[k];
    if (got === undefined) continue;
    const norm = k === 'DSM_STORAGE_ADDRESSES' ? got.split(',').sort().join(',') : got;
    if (norm !== v) problems.push(`${k}=${got} from Terraform, the rendered manifest says ${v}`);
  }
  return { problems, manifest: r.manifest };
}

async function up(): Promise<number> {
  const { problems, manifest } = await preflight();
  if (problems.length) {
    for (const p of problems) process.stderr.write(`local-lab: ${p}\n`);
    return 1;
  }
  mkdirSync(STATE, { recursive: true });
  if (runningPid() && existsSync(READY)) {
    out(readFileSync(READY, 'utf8').trim());
    return 0;
  }
  rmSync(READY, { force: true });
  const log = openSync(LOG, 'w');
  const child = spawn(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url), 'serve'], {
    detached: true,
    stdio: ['ignore', log, log],
  });
  child.unref();
  writeFileSync(PID, String(child.pid));
  const t0 = Date.now();
  while (!existsSync(READY)) {
    if (!alive(child.pid as number) || Date.now() - t0 > 300_000) {
      process.stderr.write(
        `local-lab: the lab did not come up; ${LOG}:\n${readFileSync(LOG, 'utf8').slice(-3000)}\n`,
      );
      if (alive(child.pid as number)) process.kill(child.pid as number, 'SIGTERM');
      return 1;
    }
    await sleep(250);
  }
  out(readFileSync(READY, 'utf8').trim());
  void manifest;
  return 0;
}

async function serve(): Promise<void> {
  const lab = await loadLab();
  const t0 = Date.now();
  const l = await lab.Lab.up((s) => out(`[lab] ${s}`));
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    out('[lab] stopping');
    await l.down();
    rmSync(READY, { force: true });
    rmSync(PID, { force: true });
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop());
  process.on('SIGINT', () => void stop());
  try {
    // smoke test through the tracker VIP: an upload and its download, byte for byte
    const c = l.client();
    const data = randomBytes(256 * 1024);
    const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
    const r = await c.upload({
      appId: 'tnvideo',
      userId: 'tf-local',
      source: {
        size: data.length,
        open: async function* () {
          yield data;
        },
      },
    });
    const chunks: Uint8Array[] = [];
    for await (const b of (await c.download(r.ids)).stream) chunks.push(b);
    await c.close();
    if (sha(Buffer.concat(chunks)) !== sha(data)) throw new Error('smoke test: downloaded bytes differ');
    const ready = {
      tracker_endpoint: `${lab.TRACKER_VIP}:${lab.TRACKER_PORT}`,
      tracker_vip_holder: l.net.vipHolders(lab.TRACKER_VIP),
      id_endpoint: `${lab.ID_VIP}:${lab.ID_PORT}`,
      id_vip_holder: l.net.vipHolders(lab.ID_VIP),
      storages: lab.STORAGE_HOSTS.map((h) => `${lab.ipOf(h)}:${lab.STORAGE_PORT}`),
      smoke_upload: { publicId: r.publicId, group: r.group, bytes: data.length },
      client_socket: l.proxySock,
      up_ms: Date.now() - t0,
      pid: process.pid,
    };
    writeFileSync(READY, `${JSON.stringify(ready)}\n`);
    out(`[lab] ready ${JSON.stringify(ready)}`);
  } catch (e) {
    out(`[lab] smoke test failed: ${(e as Error).stack}`);
    await stop();
  }
  setInterval(() => {}, 1 << 30);
}

async function down(): Promise<number> {
  const pid = runningPid();
  if (!pid) {
    rmSync(PID, { force: true });
    rmSync(READY, { force: true });
    out('local-lab: not running');
    return 0;
  }
  process.kill(pid, 'SIGTERM');
  const t0 = Date.now();
  while (alive(pid) && Date.now() - t0 < 90_000) await sleep(200);
  if (alive(pid)) {
    process.stderr.write(
      `local-lab: ${pid} did not stop in 90 s; killing it (the next up cleans what is left)\n`,
    );
    process.kill(pid, 'SIGKILL');
  }
  rmSync(PID, { force: true });
  rmSync(READY, { force: true });
  out('local-lab: down');
  return 0;
}

async function status(): Promise<number> {
  const pid = runningPid();
  if (pid && existsSync(READY)) {
    out(readFileSync(READY, 'utf8').trim());
    return 0;
  }
  out(
    pid
      ? `local-lab: starting (pid ${pid}, log ${LOG}, since ${statSync(PID).mtime.toISOString()})`
      : 'local-lab: down',
  );
  return pid ? 0 : 3;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const cmd = process.argv[2];
  const run = {
    up,
    down,
    status,
    check: async () => {
      const { problems } = await preflight();
      for (const p of problems) process.stderr.write(`local-lab: ${p}\n`);
      if (!problems.length) out('local-lab: rendered/local is current and is what the HA lab starts');
      return problems.length ? 1 : 0;
    },
  }[cmd ?? ''];
  if (cmd === 'serve') await serve();
  else if (!run) {
    process.stderr.write('usage: local-lab.ts up|down|status|check\n');
    process.exit(2);
  } else process.exit(await run());
}
