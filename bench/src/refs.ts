import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';

/**
 * The bare Node references of issue 12, each a separate `node` process (as the gateway is) in
 * front of nginx, so that wrk and curl measure the same path through them as through the
 * gateway:
 *
 * - the 10-line `http` proxy: what any Node HTTP server that forwards a request costs (the
 *   floor for the gateway's small-request path);
 * - the `net` → `net` pipe: what Node costs to move bytes between two sockets at all (the
 *   ceiling for the gateway's large bodies).
 *
 * They run with Node's default flags, not the nodes' NODE_FLAGS: they are what plain Node does.
 */

/** A bare Node `http` proxy: one upstream keep-alive agent, headers and body piped through. */
const HTTP_PROXY = `
const http = require('node:http');
const [port, host] = [Number(process.argv[1]), process.argv[2]];
const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
const server = http.createServer((req, res) => {
  const up = http.request({ host, port, method: req.method, path: req.url, headers: req.headers, agent }, (r) => {
    res.writeHead(r.statusCode, r.headers);
    r.pipe(res);
  });
  up.on('error', () => res.destroy());
  req.pipe(up);
});
server.keepAliveTimeout = 65000;
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
`;

/** A bare Node TCP pipe: each client connection piped to a new upstream connection, both ways. */
const TCP_PIPE = `
const net = require('node:net');
const [port, host] = [Number(process.argv[1]), process.argv[2]];
const server = net.createServer((s) => {
  const u = net.connect(port, host);
  s.pipe(u).pipe(s);
  s.on('error', () => u.destroy());
  u.on('error', () => s.destroy());
});
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
`;

export type ReferenceKind = 'http-proxy' | 'tcp-pipe';

export class ReferenceServer {
  readonly kind: ReferenceKind;
  readonly port: number;
  readonly #child: ChildProcess;
  readonly #exited: Promise<void>;

  private constructor(kind: ReferenceKind, port: number, child: ChildProcess, exited: Promise<void>) {
    this.kind = kind;
    this.port = port;
    this.#child = child;
    this.#exited = exited;
  }

  get pid(): number {
    return this.#child.pid as number;
  }

  /** Starts the reference in front of `upstreamPort` on 127.0.0.1 and waits for its port. */
  static async start(
    kind: ReferenceKind,
    upstreamPort: number,
    timeoutMs = 10_000,
  ): Promise<ReferenceServer> {
    const code = kind === 'http-proxy' ? HTTP_PROXY : TCP_PIPE;
    const child = spawn(process.execPath, ['-e', code, String(upstreamPort), '127.0.0.1'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    let stderr = '';
    child.stderr?.on('data', (c: Buffer) => {
      if (stderr.length < 4096) stderr += c.toString();
    });
    const port = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`${kind} did not start within ${timeoutMs} ms: ${stderr}`));
      }, timeoutMs);
      const rl = createInterface({ input: child.stdout! });
      rl.once('line', (line) => {
        clearTimeout(timer);
        const p = Number(line.trim());
        if (Number.isInteger(p) && p > 0) resolve(p);
        else reject(new Error(`${kind} printed "${line}" instead of its port`));
      });
      void exited.then(() => {
        clearTimeout(timer);
        reject(new Error(`${kind} exited at start-up: ${stderr}`));
      });
    });
    return new ReferenceServer(kind, port, child, exited);
  }

  /** SIGTERM by PID, SIGKILL after 3 s. */
  async stop(): Promise<void> {
    const c = this.#child;
    if (c.exitCode !== null || c.signalCode !== null) return;
    c.kill('SIGTERM');
    const t = setTimeout(() => c.kill('SIGKILL'), 3000);
    await this.#exited;
    clearTimeout(t);
  }
}
