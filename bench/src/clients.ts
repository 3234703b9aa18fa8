import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MiB } from './source.ts';
import type { Latency } from './table.ts';

/**
 * Native HTTP clients (wrk, curl) for nginx, the bare Node references and the gateway alike:
 * Node's own http client costs more CPU per request and per GiB than the servers it would
 * measure, so it would measure itself.
 */

function findOnPath(name: string): string | null {
  return (
    [...(process.env.PATH ?? '').split(':'), '/usr/bin', '/usr/local/bin']
      .filter(Boolean)
      .map((d) => join(d, name))
      .find((p) => existsSync(p)) ?? null
  );
}

/** The path of `name`, installing Debian package `pkg` with apt-get when missing (as nginx is). */
export function ensureTool(name: string, pkg: string, log: (msg: string) => void = () => {}): string {
  const found = findOnPath(name);
  if (found) return found;
  log(`${name} not found: installing ${pkg} with apt-get`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  for (const step of [['install', '-y', pkg], ['update'], ['install', '-y', pkg]]) {
    try {
      execFileSync('apt-get', step, { stdio: 'ignore', env });
      if (findOnPath(name)) break;
    } catch {
      // next step
    }
  }
  const bin = findOnPath(name);
  if (!bin) throw new Error(`${name} is needed and could not be installed (apt-get install -y ${pkg})`);
  return bin;
}

export interface WrkResult {
  rps: number;
  requests: number;
  /** Socket errors and non-2xx answers, as wrk prints them; empty when none. */
  errors: string;
  latency: Latency | undefined;
}

export interface WrkRun {
  port: number;
  /** GET: rotated over; POST: the one path. */
  paths: string[];
  connections: number;
  seconds: number;
  /** POST this many bytes per request (application/octet-stream) instead of GET. */
  postBytes?: number;
  /** Folder for wrk's Lua script. */
  scratch: string;
}

/** wrk's duration text (`812.00us`, `2.40ms`, `1.05s`, `1.2m`) in ms. */
export function wrkMs(text: string): number {
  const m = /^([\d.]+)(us|ms|s|m)$/.exec(text.trim());
  if (!m) return Number.NaN;
  const v = Number(m[1]);
  return m[2] === 'us' ? v / 1000 : m[2] === 'ms' ? v : m[2] === 's' ? v * 1000 : v * 60_000;
}

/** One `wrk -t1 --latency` run. */
export function runWrk(bin: string, r: WrkRun): Promise<WrkResult> {
  const script = join(r.scratch, `wrk-${process.pid}-${r.port}.lua`);
  writeFileSync(
    script,
    r.postBytes !== undefined
      ? `wrk.method = "POST"
wrk.body = string.rep("x", ${r.postBytes})
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.path = ${JSON.stringify(r.paths[0] ?? '/')}
`
      : `local paths = {${r.paths.map((p) => JSON.stringify(p)).join(', ')}}
local i = 0
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
`,
  );
  const args = [
    '-t1',
    `-c${r.connections}`,
    `-d${r.seconds}s`,
    '--timeout',
    '10s',
    '--latency',
    '-s',
    script,
    `http://127.0.0.1:${r.port}${r.paths[0] ?? '/'}`,
  ];
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    const take = (c: Buffer) => {
      if (out.length < 64 * 1024) out += c.toString();
    };
    child.stdout.on('data', take);
    child.stderr.on('data', take);
    child.on('error', reject);
    child.on('exit', (code) => {
      const rps = /Requests\/sec:\s+([\d.]+)/.exec(out);
      const total = /(\d+) requests in/.exec(out);
      if (code !== 0 || !rps || !total) {
        reject(new Error(`wrk failed (exit ${code}): ${out.trim()}`));
        return;
      }
      const errs = [/Socket errors:[^\n]*/.exec(out)?.[0], /Non-2xx or 3xx responses: \d+/.exec(out)?.[0]]
        .filter(Boolean)
        .join('; ');
      const p50 = /^\s+50%\s+(\S+)/m.exec(out)?.[1];
      const p99 = /^\s+99%\s+(\S+)/m.exec(out)?.[1];
      resolve({
        rps: Number(rps[1]),
        requests: Number(total[1]),
        errors: errs,
        latency: p50 && p99 ? { p50: wrkMs(p50), p99: wrkMs(p99) } : undefined,
      });
    });
  });
}

/** MiB/s of one `curl` download to /dev/null (checked: status `expect`, `size` bytes). */
export function curlRate(curl: string, url: string, size: number, range?: string): number {
  const r = spawnSync(
    curl,
    [
      '-s',
      '-o',
      '/dev/null',
      '-w',
      '%{http_code} %{size_download} %{time_total}',
      ...(range ? ['-r', range] : []),
      url,
    ],
    { encoding: 'utf8', maxBuffer: 1024 * 1024 },
  );
  if (r.error) throw r.error;
  const [status, bytes, secs] = r.stdout.trim().split(' ').map(Number) as [number, number, number];
  const expect = range ? 206 : 200;
  if (r.status !== 0 || status !== expect || bytes !== size || !(secs > 0)) {
    throw new Error(
      `curl ${url}${range ? ` (range ${range})` : ''}: exit ${r.status}, HTTP ${status}, ${bytes} of ${size} bytes`,
    );
  }
  return bytes / MiB / secs;
}

/**
 * Time to the first byte of each range, one `curl` process reusing one connection (`--next`);
 * ms per request, in order. Every answer must be a 206 with the range's length.
 */
export function curlFirstBytes(curl: string, url: string, ranges: Array<[number, number]>): number[] {
  const args: string[] = [];
  ranges.forEach(([from, to], i) => {
    if (i > 0) args.push('--next');
    args.push('-s', '-o', '/dev/null', '-w', '%{http_code} %{size_download} %{time_starttransfer}\\n');
    args.push('-r', `${from}-${to}`, url);
  });
  const r = spawnSync(curl, args, { encoding: 'utf8', maxBuffer: 4 * 1024 * 1024 });
  if (r.error) throw r.error;
  const lines = r.stdout.trim().split('\n');
  if (r.status !== 0 || lines.length !== ranges.length) {
    throw new Error(`curl ranges of ${url}: exit ${r.status}, ${lines.length} of ${ranges.length} answers`);
  }
  return lines.map((line, i) => {
    const [status, bytes, secs] = line.split(' ').map(Number) as [number, number, number];
    const [from, to] = ranges[i] as [number, number];
    if (status !== 206 || bytes !== to - from + 1) {
      throw new Error(`curl range ${from}-${to} of ${url}: HTTP ${status}, ${bytes} bytes`);
    }
    return secs * 1000;
  });
}
