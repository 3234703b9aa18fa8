import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { accessSync, constants, createWriteStream, mkdirSync, readFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { createDb } from '@dsm/db';
import { createKvStore } from '@dsm/kv';
import { sql } from 'kysely';

/**
 * Private MariaDB and Redis servers for fault tests: each on its own loopback port and folder,
 * started and stopped (by PID) by the test, so a test may kill them without touching the
 * machine's shared services on 3306 / 6379.
 */

/** Every process started here, so a dying test runner still kills them (by PID). */
const live = new Set<ChildProcess>();
let exitHook = false;
function track(child: ChildProcess): void {
  live.add(child);
  child.once('exit', () => live.delete(child));
  if (!exitHook) {
    exitHook = true;
    process.once('exit', () => {
      for (const c of live) if (c.pid) c.kill('SIGKILL');
    });
  }
}

/** The path of an executable in PATH or the usual sbin folders; throws a clear error if none. */
export function requireBinary(name: string, hint: string): string {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin', '/usr/local/sbin', '/sbin'];
  for (const d of dirs) {
    if (!d) continue;
    const p = join(d, name);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // next folder
    }
  }
  throw new Error(`${name} not found in PATH or /usr/sbin: ${hint}`);
}

function run(bin: string, args: string[], timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(bin, args, { timeout: timeoutMs }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${bin} ${args.join(' ')} failed: ${err.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((r) => child.once('exit', () => r()));
}

async function stopChild(child: ChildProcess, signal: NodeJS.Signals, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const done = exited(child);
  child.kill(signal);
  const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await done;
  clearTimeout(t);
}

async function poll(what: string, timeoutMs: number, f: () => Promise<boolean>, child: ChildProcess) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`${what} exited (${child.exitCode ?? child.signalCode}) before it was ready`);
    }
    if (await f().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`${what} not ready within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Server options for a small, quick instance (tests hold a few rows). */
const MARIADB_OPTS = [
  '--innodb-buffer-pool-size=16M',
  '--innodb-log-file-size=4M',
  '--innodb-data-file-path=ibdata1:4M:autoextend',
  '--max-connections=200',
];

/** A server process of the test's own (its folder, its port), started and stopped by PID. */
abstract class PrivateServer {
  readonly dir: string;
  readonly port: number;
  protected readonly bin: string;
  #child: ChildProcess | null = null;

  protected constructor(dir: string, port: number, bin: string) {
    this.dir = dir;
    this.port = port;
    this.bin = bin;
  }

  get pid(): number | undefined {
    return this.#child?.pid;
  }

  get running(): boolean {
    const c = this.#child;
    return !!c && c.exitCode === null && c.signalCode === null;
  }

  abstract ping(): Promise<boolean>;

  /** Spawns the server (output to `logName` in its folder) and waits until `ping` answers. */
  protected async launch(what: string, args: string[], logName: string, timeoutMs: number): Promise<void> {
    if (this.running) throw new Error(`${what} is already running`);
    const log = createWriteStream(join(this.dir, logName), { flags: 'a' });
    const child = spawn(this.bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout?.pipe(log);
    child.stderr?.pipe(log);
    track(child);
    this.#child = child;
    try {
      await poll(`${what} on port ${this.port}`, timeoutMs, () => this.ping(), child);
    } catch (e) {
      await stopChild(child, 'SIGKILL', 1000);
      throw e;
    }
  }

  /** SIGTERM (clean shutdown) or SIGKILL (a crash); waits for the process to exit. */
  async stop(signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM', timeoutMs = 20_000): Promise<void> {
    const c = this.#child;
    if (!c) return;
    await stopChild(c, signal, timeoutMs);
    this.#child = null;
  }
}

export class PrivateMariadb extends PrivateServer {
  private constructor(dir: string, port: number, bin: string) {
    super(dir, port, bin);
  }

  /** Creates a data folder (root without password, loopback only) and starts the server. */
  static async create(dir: string, port: number): Promise<PrivateMariadb> {
    const hint = 'this test needs MariaDB server binaries (apt-get install mariadb-server)';
    const bin = requireBinary('mariadbd', hint);
    const install = requireBinary('mariadb-install-db', hint);
    mkdirSync(dir, { recursive: true });
    await run(
      install,
      [
        '--no-defaults',
        `--datadir=${join(dir, 'data')}`,
        '--auth-root-authentication-method=normal',
        '--skip-test-db',
        ...(process.getuid?.() === 0 ? ['--user=root'] : []),
        ...MARIADB_OPTS,
        // the bootstrap need not be durable (a failed one fails the test anyway)
        '--innodb-flush-log-at-trx-commit=0',
        '--innodb-doublewrite=0',
      ],
      60_000,
    );
    const m = new PrivateMariadb(dir, port, bin);
    await m.start();
    return m;
  }

  /** `mysql://root@127.0.0.1:<port>/<db>` */
  url(db: string): string {
    return `mysql://root@127.0.0.1:${this.port}/${db}`;
  }

  /** Starts the server on the same port and data folder; resolves once it answers a query. */
  async start(timeoutMs = 30_000): Promise<void> {
    try {
      await this.launch(
        'mariadbd',
        [
          '--no-defaults',
          `--datadir=${join(this.dir, 'data')}`,
          `--port=${this.port}`,
          '--bind-address=127.0.0.1',
          `--socket=${join(this.dir, 'mysqld.sock')}`,
          `--pid-file=${join(this.dir, 'mysqld.pid')}`,
          `--log-error=${join(this.dir, 'error.log')}`,
          ...(process.getuid?.() === 0 ? ['--user=root'] : []),
          ...MARIADB_OPTS,
        ],
        'mariadbd.out',
        timeoutMs,
      );
    } catch (e) {
      throw new Error(`${(e as Error).message}\n${this.errorLogTail()}`);
    }
  }

  /** True when the server answers `SELECT 1` (a fresh connection each time). */
  async ping(): Promise<boolean> {
    const h = createDb(this.url('mysql'), { connectionLimit: 1, connectTimeoutMs: 1000 });
    try {
      await sql`SELECT 1`.execute(h.db);
      return true;
    } catch {
      return false;
    } finally {
      await h.close();
    }
  }

  errorLogTail(lines = 15): string {
    try {
      return readFileSync(join(this.dir, 'error.log'), 'utf8').split('\n').slice(-lines).join('\n');
    } catch {
      return '(no error log)';
    }
  }
}

export class PrivateRedis extends PrivateServer {
  private constructor(dir: string, port: number, bin: string) {
    super(dir, port, bin);
  }

  /** A Redis without persistence on 127.0.0.1:<port> (a restart starts empty). */
  static async create(dir: string, port: number): Promise<PrivateRedis> {
    const bin = requireBinary(
      'redis-server',
      'this test needs the Redis server binary (apt-get install redis-server)',
    );
    mkdirSync(dir, { recursive: true });
    const r = new PrivateRedis(dir, port, bin);
    await r.start();
    return r;
  }

  /** `redis://127.0.0.1:<port>/0` plus an optional key prefix. */
  url(prefix?: string): string {
    return `redis://127.0.0.1:${this.port}/0${prefix ? `?prefix=${prefix}` : ''}`;
  }

  async start(timeoutMs = 10_000): Promise<void> {
    await this.launch(
      'redis-server',
      [
        '--port',
        String(this.port),
        '--bind',
        '127.0.0.1',
        '--save',
        '',
        '--appendonly',
        'no',
        '--dir',
        this.dir,
        '--daemonize',
        'no',
      ],
      'redis.log',
      timeoutMs,
    );
  }

  async ping(): Promise<boolean> {
    const kv = createKvStore(this.url(), { connectTimeoutMs: 500, commandTimeoutMs: 500 });
    try {
      await kv.get('ping');
      return true;
    } catch {
      return false;
    } finally {
      await kv.close();
    }
  }

  /** The raw value of `key` (no prefix applied), or null. */
  async rawGet(key: string): Promise<string | null> {
    const kv = createKvStore(this.url(), { connectTimeoutMs: 1000, commandTimeoutMs: 1000 });
    try {
      return await kv.get(key);
    } finally {
      await kv.close();
    }
  }
}
