import { execFileSync } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { freePortRange } from '@dsm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { patternBytes, type Stack, startStack } from './test-support.ts';

// Slow readers and stalled uploaders against a gateway running as its own process (as `dsm up`
// starts it), from many loopback addresses (127.0.1.x, 127.0.2.x: Linux routes all of 127/8 to
// lo), while a normal client on 127.0.0.1 measures its download rate.

const ATTACKERS = 500;
const ADDRESSES = 25; // 20 connections from each address, more than connectionsPerClient
const MiB = 1024 * 1024;

const gatewayConfig = {
  // a small upstream pool, so that holding it is cheap for the attacker
  upstreamConnections: 64,
  timeouts: { bodyIdleMs: 15_000, downloadIdleMs: 15_000, headersMs: 20_000, upstreamQueueMs: 2000 },
  limits: { connectionsPerClient: 16, downloadsPerClient: 4, concurrentUploads: 16, upstreamQueue: 32 },
};

let stack: Stack;
let gwUrl: string;
let gwPort: number;
let bigId: string;
let normalId: string;
const sockets: Socket[] = [];

beforeAll(async () => {
  const [port] = [await freePortRange(1)];
  gwPort = port as number;
  stack = await startStack(
    'sqlite+memory',
    {},
    { gateways: 1, gatewayBasePort: gwPort, extra: { gateway: { ...gatewayConfig, statCacheMs: 0 } } },
  );
  gwUrl = `http://127.0.0.1:${gwPort}`;
  const up = async (bytes: Uint8Array<ArrayBuffer>) => {
    const r = await fetch(`${stack.gateway.url}/files`, { method: 'POST', body: bytes });
    expect(r.status).toBe(201);
    return ((await r.json()) as { id: string }).id;
  };
  bigId = await up(patternBytes(64 * MiB, 1));
  normalId = await up(patternBytes(16 * MiB, 2));
}, 120_000);

afterAll(async () => {
  for (const s of sockets) s.destroy();
  await stack?.stop();
}, 60_000);

/** Bytes per second of one whole download of the normal file (fails on anything but 200). */
async function normalDownload(): Promise<{ rate: number; status: number }> {
  const t0 = performance.now();
  const r = await fetch(`${gwUrl}/files/${normalId}`);
  if (r.status !== 200) {
    await r.body?.cancel();
    return { rate: 0, status: r.status };
  }
  const n = (await r.arrayBuffer()).byteLength;
  expect(n).toBe(16 * MiB);
  return { rate: n / ((performance.now() - t0) / 1000), status: r.status };
}

/** Established connections to the gateway from attacking addresses (127.0.1.x, 127.0.2.x), seen
 * on the gateway's side: what the gateway still holds, whatever the attacker's socket knows. */
function heldByGateway(): number {
  const out = execFileSync('ss', ['-Htn', 'state', 'established', `( sport = :${gwPort} )`], {
    encoding: 'utf8',
  });
  return out.split('\n').filter((l) => /\s127\.0\.[12]\.\d+:\d+\s*$/.test(l)).length;
}

async function measure(runs: number): Promise<{ rate: number; statuses: number[]; rates: number[] }> {
  const rates: number[] = [];
  const statuses: number[] = [];
  for (let i = 0; i < runs; i++) {
    const m = await normalDownload();
    rates.push(m.rate);
    statuses.push(m.status);
  }
  const sorted = [...rates].sort((a, b) => a - b);
  return { rate: sorted[Math.floor(sorted.length / 2)] as number, statuses, rates };
}

interface Attacker {
  socket: Socket;
  connected: boolean;
}

/** A raw connection from `localAddress` that sends `head` (+ `body`) and then never reads. */
function attacker(localAddress: string, head: string, body?: Uint8Array): Attacker {
  const socket = connect({ host: '127.0.0.1', port: gwPort, localAddress });
  sockets.push(socket);
  const a: Attacker = { socket, connected: false };
  socket.on('connect', () => {
    a.connected = true;
    socket.write(head);
    if (body) socket.write(body);
    socket.pause(); // never read: the gateway's writes back up into the kernel buffers
  });
  socket.on('error', () => {});
  return a;
}

describe('HTTP edge under slow readers and stalled uploaders', () => {
  it('keeps a normal client at >= 50% of its unloaded download rate, with no 503, and cuts the idle attackers', async () => {
    await measure(1); // warm up (connections, JIT)
    const unloaded = await measure(5);

    const attackers: Attacker[] = [];
    for (let i = 0; i < ATTACKERS; i++) {
      const from = `127.0.1.${1 + (i % ADDRESSES)}`;
      attackers.push(attacker(from, `GET /files/${bigId} HTTP/1.1\r\nHost: x\r\n\r\n`));
    }
    for (let i = 0; i < ATTACKERS; i++) {
      const from = `127.0.2.${1 + (i % ADDRESSES)}`;
      attackers.push(
        attacker(
          from,
          `POST /files HTTP/1.1\r\nHost: x\r\nContent-Type: video/mp4\r\nContent-Length: ${64 * MiB}\r\n\r\n`,
          patternBytes(1024, 3),
        ),
      );
    }
    // let the attack settle: every connection made, buffers full, pool taken where it can be
    const attackStart = Date.now();
    await new Promise((r) => setTimeout(r, 2500));
    const connected = attackers.filter((a) => a.connected).length;
    const heldBefore = heldByGateway();

    const loaded = await measure(5);
    const measuredWithin = Date.now() - attackStart;
    const heldAfter = heldByGateway();
    const mib = (r: number) => (r / MiB).toFixed(1);
    console.log(
      `normal client: unloaded ${mib(unloaded.rate)} MiB/s (${unloaded.rates.map(mib).join(', ')}), ` +
        `under attack ${mib(loaded.rate)} MiB/s (${loaded.rates.map(mib).join(', ')}) = ` +
        `${((100 * loaded.rate) / unloaded.rate).toFixed(0)}% of unloaded; statuses ${loaded.statuses.join(',')}; ` +
        `${connected} attacking connections made, ${heldBefore} held by the gateway before and ` +
        `${heldAfter} after the measurement (${measuredWithin} ms into the attack)`,
    );
    expect(loaded.statuses).toEqual([200, 200, 200, 200, 200]);
    expect(loaded.rate).toBeGreaterThanOrEqual(unloaded.rate * 0.5);
    // the attack really ran through the measurement: hundreds of connections held open
    expect(connected).toBeGreaterThan(ATTACKERS);
    // each address keeps its 4 downloads (more than the 64 upstream connections in all), and 16
    // uploads stall: the rest were refused (429) and closed
    expect(heldAfter).toBeGreaterThanOrEqual(ADDRESSES * gatewayConfig.limits.downloadsPerClient);
    expect(measuredWithin).toBeLessThan(gatewayConfig.timeouts.bodyIdleMs);

    // the idle cuts: the gateway closes every attacking connection once it made no progress for
    // the idle timeout (Node checks a stalled write twice: between 15 and 30 s), plus slack
    const deadline = attackStart + 40_000;
    let held = heldByGateway();
    while (Date.now() < deadline && held > 0) {
      await new Promise((r) => setTimeout(r, 500));
      held = heldByGateway();
    }
    console.log(`attacking connections the gateway still holds ${Date.now() - attackStart} ms in: ${held}`);
    expect(held).toBe(0);
    // and the gateway still serves
    expect((await normalDownload()).status).toBe(200);
  }, 120_000);
});
