import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';

export interface NginxOptions {
  /** Prefix folder: nginx.conf, pid file, error log and temp folders go here. */
  prefix: string;
  /** Folder served at `/`. */
  root: string;
  port: number;
  host?: string;
  /** `1` (default: one event loop, like one storage process) or `auto`. */
  workerProcesses?: number | 'auto';
}

/** Installs nginx with apt-get when `nginx` is not on the PATH (Debian: nginx-light, else nginx). */
export function ensureNginx(log: (msg: string) => void = () => {}): string {
  const found = nginxBinary();
  if (found) return found;
  log('nginx not found: installing it with apt-get');
  const install = (pkg: string) => {
    try {
      execFileSync('apt-get', ['install', '-y', pkg], { stdio: 'ignore', env: aptEnv() });
      return true;
    } catch {
      return false;
    }
  };
  if (!install('nginx-light')) {
    execFileSync('apt-get', ['update'], { stdio: 'ignore', env: aptEnv() });
    if (!install('nginx-light') && !install('nginx')) {
      throw new Error('could not install nginx (apt-get install -y nginx-light / nginx failed)');
    }
  }
  const bin = nginxBinary();
  if (!bin) throw new Error('nginx was installed but is not on the PATH');
  return bin;
}

function aptEnv(): NodeJS.ProcessEnv {
  return { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
}

function nginxBinary(): string | null {
  for (const dir of [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/usr/local/sbin', '/sbin']) {
    if (dir && existsSync(join(dir, 'nginx'))) return join(dir, 'nginx');
  }
  return null;
}

export function nginxVersion(bin: string): string {
  // nginx prints its version on stderr
  const r = spawnSync(bin, ['-v'], { encoding: 'utf8' });
  return `${r.stderr ?? ''}${r.stdout ?? ''}`.trim();
}

/**
 * A private nginx: its own prefix and config, running as the current user in the foreground
 * (`daemon off`), serving `root` on 127.0.0.1. Stopped by PID.
 */
export class PrivateNginx {
  readonly opts: Required<NginxOptions>;
  readonly #child: ChildProcess;
  readonly #exited: Promise<number | null>;
  #stopped = false;

  private constructor(opts: Required<NginxOptions>, child: ChildProcess) {
    this.opts = opts;
    this.#child = child;
    this.#exited = new Promise((r) => {
      if (child.exitCode !== null || child.signalCode !== null) r(child.exitCode);
      else child.once('exit', (code) => r(code));
    });
  }

  get pid(): number {
    return this.#child.pid as number;
  }

  get errorLog(): string {
    return join(this.opts.prefix, 'error.log');
  }

  /** PIDs of the worker processes (children of the master). */
  workerPids(): number[] {
    try {
      const text = readFileSync(`/proc/${this.pid}/task/${this.pid}/children`, 'utf8');
      return text.trim().split(/\s+/).filter(Boolean).map(Number);
    } catch {
      return [];
    }
  }

  static async start(bin: string, o: NginxOptions): Promise<PrivateNginx> {
    const opts: Required<NginxOptions> = { host: '127.0.0.1', workerProcesses: 1, ...o };
    const { prefix } = opts;
    mkdirSync(join(prefix, 'temp'), { recursive: true });
    const conf = join(prefix, 'nginx.conf');
    writeFileSync(conf, nginxConf(opts));
    const errorLog = join(prefix, 'error.log');
    const child = spawn(
      bin,
      ['-p', `${prefix}/`, '-c', conf, '-e', errorLog, '-g', `daemon off; pid ${join(prefix, 'nginx.pid')};`],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let stderr = '';
    child.stderr?.on('data', (c: Buffer) => {
      stderr += c.toString();
    });
    const n = new PrivateNginx(opts, child);
    const deadline = Date.now() + 10_000;
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) {
        const log = existsSync(errorLog) ? readFileSync(errorLog, 'utf8') : '';
        throw new Error(`nginx exited at start-up (code ${child.exitCode}): ${stderr}${log}`.trim());
      }
      if (await answers(opts.host, opts.port)) return n;
      if (Date.now() > deadline) {
        await n.stop();
        throw new Error(`nginx did not answer on ${opts.host}:${opts.port} within 10 s: ${stderr}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** SIGTERM (fast shutdown) by PID, SIGKILL after 5 s. Safe to call twice. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    if (this.#child.exitCode !== null || this.#child.signalCode !== null) return;
    try {
      process.kill(this.pid, 'SIGTERM');
    } catch {
      return;
    }
    const t = setTimeout(() => {
      try {
        process.kill(this.pid, 'SIGKILL');
      } catch {
        // gone already
      }
    }, 5000);
    await this.#exited;
    clearTimeout(t);
  }

  /** Synchronous last resort (process 'exit' handler). */
  killNow(): void {
    if (this.#child.exitCode !== null || this.#child.signalCode !== null) return;
    try {
      process.kill(this.pid, 'SIGTERM');
    } catch {
      // gone already
    }
  }
}

function nginxConf(o: Required<NginxOptions>): string {
  const p = o.prefix;
  const asRoot = typeof process.getuid === 'function' && process.getuid() === 0;
  return `# private benchmark instance (generated by @dsm/bench)
${asRoot ? 'user root;\n' : ''}worker_processes ${o.workerProcesses};
error_log ${join(p, 'error.log')} warn;
events {
  worker_connections 1024;
}
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 65;
  keepalive_requests 1000000;
  default_type application/octet-stream;
  client_body_temp_path ${join(p, 'temp', 'body')};
  proxy_temp_path ${join(p, 'temp', 'proxy')};
  fastcgi_temp_path ${join(p, 'temp', 'fastcgi')};
  uwsgi_temp_path ${join(p, 'temp', 'uwsgi')};
  scgi_temp_path ${join(p, 'temp', 'scgi')};
  server {
    listen ${o.host}:${o.port};
    root ${o.root};
    location / {
    }
  }
}
`;
}

function answers(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const req = request({ host, port, path: '/', method: 'HEAD', agent: false, timeout: 1000 }, (res) => {
      res.resume();
      resolve(true);
    });
    req.on('error', () => resolve(false));
    req.on('timeout', () => {
      req.destroy();
      resolve(false);
    });
    req.end();
  });
}
