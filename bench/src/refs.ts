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
 *   ceiling for the gateway's large bodies);
 * - the `http` server answering 4 KiB from memory: what Node's HTTP server costs per request at
 *   all (the ceiling for the gateway's small-file cache, which answers from memory too);
 * - the bare pair, a 20-line `http` server asking a 20-line storage-protocol server (one
 *   download frame on a kept connection, the reply's 4 KiB read with one pread): the least two
 *   Node processes can cost on the gateway's path without its cache (the gateway in front of the
 *   storage), as the http proxy is for one Node process in front of nginx.
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

/** A bare Node `http` server: every request answered with the same 4 KiB from memory. */
const HTTP_MEMORY = `
const http = require('node:http');
const body = Buffer.alloc(4096, 7);
const server = http.createServer((req, res) => {
  res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': body.length, ETag: '"x"' });
  res.end(body);
});
server.keepAliveTimeout = 65000;
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
`;

/**
 * A bare storage-protocol server: each request frame (10-byte header, body skipped) answered
 * with a reply frame of the file's first 4 KiB, read with one pread (as the storage reads small
 * replies from a local store).
 */
const BARE_STORAGE = `
const net = require('node:net');
const fs = require('node:fs');
const fd = fs.openSync(process.argv[3], 'r');
const server = net.createServer((s) => {
  s.setNoDelay(true);
  let buf = Buffer.alloc(0);
  s.on('data', (d) => {
    buf = buf.length ? Buffer.concat([buf, d]) : d;
    while (buf.length >= 10) {
      const len = Number(buf.readBigInt64BE(0));
      if (buf.length < 10 + len) break;
      buf = buf.subarray(10 + len);
      const out = Buffer.allocUnsafe(10 + 4096);
      out.writeBigInt64BE(4096n, 0);
      out[8] = 100;
      out[9] = 0;
      fs.readSync(fd, out, 10, 4096, 0);
      s.write(out);
    }
  });
  s.on('error', () => {});
});
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
`;

/**
 * A bare gateway in front of BARE_STORAGE: per HTTP request one download frame on an idle kept
 * connection (a new one when none is idle), the reply's body sent as the HTTP body.
 */
const BARE_GATEWAY = `
const http = require('node:http');
const net = require('node:net');
const [port, host] = [Number(process.argv[1]), process.argv[2]];
const frame = Buffer.alloc(10 + 64);
frame.writeBigInt64BE(64n, 0);
frame[8] = 72;
const idle = [];
function connect() {
  const s = net.connect(port, host);
  s.setNoDelay(true);
  let buf = Buffer.alloc(0);
  s.on('data', (d) => {
    buf = buf.length ? Buffer.concat([buf, d]) : d;
    if (buf.length < 10) return;
    const len = Number(buf.readBigInt64BE(0));
    if (buf.length < 10 + len) return;
    const body = buf.subarray(10, 10 + len);
    buf = Buffer.alloc(0);
    const done = s.waiter;
    s.waiter = null;
    idle.push(s);
    done(body);
  });
  s.on('error', () => {});
  return s;
}
const server = http.createServer((req, res) => {
  const s = idle.pop() ?? connect();
  s.waiter = (body) => {
    res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': body.length, ETag: '"x"' });
    res.end(body);
  };
  s.write(frame);
});
server.keepAliveTimeout = 65000;
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
`;

export type ReferenceKind = 'http-proxy' | 'tcp-pipe' | 'http-memory' | 'bare-storage' | 'bare-gateway';

const CODE: Record<ReferenceKind, string> = {
  'http-proxy': HTTP_PROXY,
  'tcp-pipe': TCP_PIPE,
  'http-memory': HTTP_MEMORY,
  'bare-storage': BARE_STORAGE,
  'bare-gateway': BARE_GATEWAY,
};

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

  /**
   * Starts the reference in front of `upstreamPort` on 127.0.0.1 (none for http-memory and
   * bare-storage: 0) and waits for its port; bare-storage serves `file`.
   */
  static async start(
    kind: ReferenceKind,
    upstreamPort: number,
    timeoutMs = 10_000,
    file = '',
  ): Promise<ReferenceServer> {
    const child = spawn(process.execPath, ['-e', CODE[kind], String(upstreamPort), '127.0.0.1', file], {
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
