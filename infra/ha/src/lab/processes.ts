/**
 * Processes of the lab: commands run to completion (`sh`), daemons started inside a host's
 * namespaces and recorded by PID, and dsm nodes started through the `dsm` command and waited
 * for until their ready line. Everything started is recorded, so teardown kills exactly that.
 */
import { type ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { dsmEntry } from '@dsm/cluster';
import { HOSTS, type Host, LAB_STATE, mntnsOf, netnsOf } from './topology.ts';

const execFileP = promisify(execFile);
const PATH = `${process.env.PATH ?? ''}:/usr/sbin:/sbin`;
/** Environment of every command and process of the lab (netns-lab.sh reads DSM_LAB_HOSTS). */
export const LAB_ENV: NodeJS.ProcessEnv = { ...process.env, PATH, DSM_LAB_HOSTS: HOSTS.join(' ') };

/** Runs a command to completion; its stdout, or an error naming the command and its stderr. */
export async function sh(cmd: string, args: string[], timeoutMs = 60_000): Promise<string> {
  try {
    const { stdout } = await execFileP(cmd, args, { env: LAB_ENV, timeout: timeoutMs, maxBuffer: 16 << 20 });
    return stdout;
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')} failed: ${(err.stderr || err.message).trim()}`);
  }
}

/** Runs a command synchronously (teardown runs from an 'exit' hook); '' when it fails. */
export function shSync(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, {
      env: LAB_ENV,
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 30_000,
    }).toString();
  } catch {
    return '';
  }
}

/** Alive and not a zombie: `kill(pid, 0)` is true for zombies, so read /proc (pitfall P5). */
export function pidAlive(pid: number | undefined): boolean {
  if (!pid) return false;
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '')[0];
    return st !== 'Z' && st !== 'X';
  } catch {
    return false;
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A command runner inside host `h`'s network and mount namespaces (replaceable to record argv). */
export type NodeRunner = (h: Host, argv: string[], timeoutMs?: number) => Promise<string>;

/** `argv` inside host `h`'s network and mount namespaces. */
export const inNode: NodeRunner = (h, argv, timeoutMs = 60_000) =>
  sh('nsenter', [`--net=/run/netns/${netnsOf(h)}`, `--mount=${mntnsOf(h)}`, '--', ...argv], timeoutMs);

export type NodeRole = 'tracker' | 'id' | 'storage';

export interface LabNode {
  name: string;
  host: Host;
  role: NodeRole;
  configFile: string;
  child: ChildProcess | null;
  pid: number | undefined;
}

/** What the lab started, by PID; `killAll()` ends exactly that. */
export class LabProcesses {
  readonly nodes = new Map<string, LabNode>();
  readonly #pids = new Set<number>();
  readonly #children = new Set<ChildProcess>();

  /** Records a PID the lab did not spawn itself (a daemon's pid file). */
  adopt(pid: number): void {
    if (pid) this.#pids.add(pid);
  }

  /** Starts `argv` in host `h`'s network (and mount) namespace, output to logs/<logName>. */
  spawnDetached(h: Host, argv: string[], logName: string, mountNs = false): ChildProcess {
    const out = openSync(join(LAB_STATE, 'logs', logName), 'a');
    const child = spawn(
      'nsenter',
      [`--net=/run/netns/${netnsOf(h)}`, ...(mountNs ? [`--mount=${mntnsOf(h)}`] : []), '--', ...argv],
      {
        env: { ...LAB_ENV, DSM_PARENT_PID: String(process.pid) },
        stdio: ['ignore', out, out],
        detached: true,
      },
    );
    closeSync(out);
    if (child.pid) this.#pids.add(child.pid);
    this.#children.add(child);
    child.once('exit', () => this.#children.delete(child));
    return child;
  }

  /**
   * Starts (or restarts) the dsm node `name` of host `h` from `configFile` (the `dsm` command,
   * found as @dsm/cluster's launcher finds it) and waits for its ready line.
   */
  async startNode(
    h: Host,
    name: string,
    role: NodeRole,
    configFile: string,
    timeoutMs = 60_000,
  ): Promise<void> {
    const logFile = join(LAB_STATE, 'logs', `${name}.log`);
    const err = openSync(logFile, 'a');
    const child = spawn(
      'nsenter',
      [
        `--net=/run/netns/${netnsOf(h)}`,
        ...(role === 'storage' ? [`--mount=${mntnsOf(h)}`] : []),
        '--',
        process.execPath,
        dsmEntry(),
        role,
        '--config',
        configFile,
      ],
      {
        env: { ...LAB_ENV, DSM_PARENT_PID: String(process.pid), DSM_LOG_LEVEL: 'warn' },
        stdio: ['ignore', 'pipe', err],
      },
    );
    closeSync(err);
    if (child.pid) this.#pids.add(child.pid);
    this.#children.add(child);
    const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
    void exited.then(() => this.#children.delete(child));
    let ready = false;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`${name} not ready within ${timeoutMs} ms (log ${logFile})`));
      }, timeoutMs);
      createInterface({ input: child.stdout! }).on('line', (line) => {
        if (line.startsWith('{"ready"')) {
          ready = true;
          clearTimeout(timer);
          resolve();
        }
      });
      void exited.then((code) => {
        if (ready) return;
        clearTimeout(timer);
        const tail = existsSync(logFile) ? readFileSync(logFile, 'utf8').slice(-800) : '';
        reject(new Error(`${name} exited (${code}) before it was ready: ${tail}`));
      });
    });
    this.nodes.set(name, { name, host: h, role, configFile, child, pid: child.pid });
  }

  /** SIGKILL the dsm node `name` (a process crash). */
  async killNode(name: string): Promise<void> {
    const n = this.nodes.get(name);
    if (!n?.child) return;
    const c = n.child;
    const gone = new Promise((r) => c.once('exit', r));
    c.kill('SIGKILL');
    await gone;
    n.child = null;
  }

  /** The node `name` is gone without our doing (its host was killed). */
  forget(name: string): void {
    const n = this.nodes.get(name);
    if (n) n.child = null;
  }

  /** SIGKILL everything recorded. Synchronous (runs from a process 'exit' hook). */
  killAll(): void {
    for (const c of this.#children) c.kill('SIGKILL');
    for (const p of this.#pids)
      if (pidAlive(p))
        try {
          process.kill(p, 'SIGKILL');
        } catch {}
  }
}
