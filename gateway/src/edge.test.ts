import { execFileSync } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { encodePublicId } from '@dsm/client';
import { freePortRange, until } from '@dsm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunningGateway } from './node.ts';
import { patternBytes, type Stack, startStack } from './test-support.ts';

// The hardened HTTP edge, against a real cluster: content safety headers, lookups by request
// strings, inactivity cuts, concurrency caps and what problem details may say.

const MiB = 1024 * 1024;
let s: Stack;
let gw: RunningGateway;
const sockets: Socket[] = [];

beforeAll(async () => {
  s = await startStack('sqlite+memory', {
    timeouts: { bodyIdleMs: 1000, downloadIdleMs: 1000, upstreamReleaseMs: 200 },
  });
  gw = s.gateway;
}, 120_000);

afterAll(async () => {
  for (const k of sockets) k.destroy();
  await s?.stop();
}, 60_000);

async function upload(g: RunningGateway, body: Uint8Array<ArrayBuffer>, type?: string) {
  const r = await fetch(`${g.url}/files`, {
    method: 'POST',
    body,
    headers: type ? { 'content-type': type } : {},
  });
  expect(r.status).toBe(201);
  return (await r.json()) as { id: string; url: string };
}

/** A raw connection (from `localAddress`) that sends `text` and then, if `pause`, never reads. */
function raw(g: RunningGateway, text: string, o: { localAddress?: string; pause?: boolean } = {}) {
  const sock = connect({ host: '127.0.0.1', port: g.port, localAddress: o.localAddress });
  sockets.push(sock);
  let received = '';
  const closed = new Promise<number>((resolve) => {
    const t0 = Date.now();
    sock.on('close', () => resolve(Date.now() - t0));
  });
  sock.on('error', () => {});
  sock.on('connect', () => {
    sock.write(text);
    if (o.pause) sock.pause();
  });
  sock.on('data', (d) => {
    if (received.length < 4096) received += d.toString('latin1');
  });
  return { sock, closed, received: () => received };
}

/** Established connections the gateway holds from `peer` (its side of the socket, via ss). */
function established(g: RunningGateway, peer: string): number {
  const out = execFileSync('ss', ['-Htn', 'state', 'established', `( sport = :${g.port} )`], {
    encoding: 'utf8',
  });
  return out.split('\n').filter((l) => l.includes(` ${peer}:`)).length;
}

describe('content safety', () => {
  const cases: [string, 'inline' | 'attachment'][] = [
    ['video/mp4', 'inline'],
    ['audio/mpeg', 'inline'],
    ['image/png', 'inline'],
    ['image/jpeg', 'inline'],
    ['image/gif', 'inline'],
    ['image/webp', 'inline'],
    ['image/avif', 'inline'],
    ['application/vnd.apple.mpegurl', 'inline'],
    ['application/x-mpegurl', 'inline'],
    ['application/dash+xml', 'inline'],
    ['text/plain; charset=utf-8', 'inline'],
    ['image/svg+xml', 'attachment'],
    ['text/html', 'attachment'],
    ['application/xhtml+xml', 'attachment'],
    ['text/xml', 'attachment'],
    ['application/javascript', 'attachment'],
    ['application/pdf', 'attachment'],
    ['application/json', 'attachment'],
    ['video/mp4;x', 'inline'],
  ];

  it('serves inline only the media allow-list, everything else as an attachment; CSP sandbox and nosniff on all', async () => {
    for (const [type, want] of cases) {
      const f = await upload(gw, patternBytes(100 * 1024, 7), type);
      for (const url of [f.url, `${f.url}/name.bin`]) {
        const r = await fetch(url);
        await r.arrayBuffer();
        expect(r.status, `${type} ${url}`).toBe(200);
        expect(r.headers.get('content-security-policy'), type).toBe("sandbox; default-src 'none'");
        expect(r.headers.get('x-content-type-options'), type).toBe('nosniff');
        const disp = r.headers.get('content-disposition');
        if (want === 'attachment') expect(disp, `${type} ${url}`).toMatch(/^attachment\b/);
        else expect(disp ?? 'inline', `${type} ${url}`).toMatch(/^inline\b/);
      }
    }
  });

  it('puts the same headers on 304s, HEADs and problems of /files', async () => {
    const f = await upload(gw, patternBytes(1000, 8), 'text/html');
    const first = await fetch(f.url);
    await first.arrayBuffer();
    const again = await fetch(f.url, { headers: { 'if-none-match': first.headers.get('etag') as string } });
    const head = await fetch(f.url, { method: 'HEAD' });
    const missing = await fetch(
      `${gw.url}/files/${encodePublicId({ appId: 'tnvideo', userId: 'tnv001', fileId: 'nope' })}`,
    );
    await missing.arrayBuffer();
    expect([again.status, head.status, missing.status]).toEqual([304, 200, 404]);
    for (const r of [again, head, missing]) {
      expect(r.headers.get('content-security-policy')).toBe("sandbox; default-src 'none'");
      expect(r.headers.get('x-content-type-options')).toBe('nosniff');
    }
    expect(head.headers.get('content-disposition')).toMatch(/^attachment/);
  });
});

describe('lookups by request strings', () => {
  it('takes prototype keys as file extensions for plain names (no type found)', async () => {
    const f = await upload(gw, patternBytes(2000, 9));
    for (const ext of ['constructor', '__proto__', 'toString']) {
      const r = await fetch(`${f.url}/movie.${ext}`);
      await r.arrayBuffer();
      expect(r.status, ext).toBe(200);
      expect(r.headers.get('content-type'), ext).toBe('application/octet-stream');
      expect(r.headers.get('content-disposition'), ext).toMatch(/^attachment/);
    }
  });

  it('takes prototype keys as app ids for apps without a policy (the default policy applies)', async () => {
    const signed = await s.startGateway({
      downloads: {
        default: 'signed',
        apps: { tnvideo: 'public' },
        signingKeys: { k1: 'a-signing-key-of-enough-length' },
      },
    });
    for (const appId of ['constructor', '__proto__', 'toString', 'hasOwnProperty']) {
      const id = encodePublicId({ appId, userId: 'u1', fileId: 'f1' });
      const r = await fetch(`${signed.url}/files/${id}`);
      const p = (await r.json()) as { code: string };
      // signed by default: no signature, no download (old code read the prototype: not "signed")
      expect([appId, r.status, p.code]).toEqual([appId, 401, 'DSM_ERR_UNAUTHORIZED']);
      const meta = await fetch(`${signed.url}/files/${id}/meta`);
      await meta.arrayBuffer();
      expect(meta.status, appId).toBe(401);
    }
    // through the public gateway they are ordinary unknown files: a 4xx problem, never a 500
    for (const appId of ['constructor', '__proto__', 'toString']) {
      const r = await fetch(`${gw.url}/files/${encodePublicId({ appId, userId: 'u1', fileId: 'f1' })}`);
      await r.arrayBuffer();
      expect(r.status, appId).toBeGreaterThanOrEqual(400);
      expect(r.status, appId).toBeLessThan(500);
    }
  });

  it('takes prototype keys as multipart field names', async () => {
    const form = new FormData();
    form.set('__proto__', 'x');
    form.set('constructor', 'y');
    form.set('toString', 'z');
    form.set('file', new Blob([patternBytes(3000, 10)], { type: 'video/mp4' }), 'a.mp4');
    const r = await fetch(`${gw.url}/files`, { method: 'POST', body: form });
    expect(r.status).toBe(201);
    expect(((await r.json()) as { contentType: string }).contentType).toBe('video/mp4');
  });
});

describe('inactivity timeouts', () => {
  // 1 MiB: the header goes to the storage at once; 4 KiB: it waits for the body's first chunk
  // (the protocol client's coalesced small upload); both through the Node fast path (fastUpload)
  it.each([MiB, 4096])(
    'cuts an upload body of %i bytes that goes silent, and aborts the upload',
    async (size) => {
      const before = s.dataFiles().length;
      const c = raw(
        gw,
        `POST /files HTTP/1.1\r\nHost: x\r\nContent-Type: video/mp4\r\nContent-Length: ${size}\r\n\r\n${'a'.repeat(1024)}`,
      );
      const ms = await Promise.race([c.closed, new Promise<number>((r) => setTimeout(() => r(-1), 5000))]);
      expect(ms).toBeGreaterThanOrEqual(900);
      expect(ms).toBeLessThan(4000);
      // nothing is left of it in the storages
      await until(() => s.dataFiles().length === before, 5000, 50);
    },
  );

  it('keeps an upload that is slow but never silent for a whole timeout', async () => {
    const total = 16 * 4096;
    const c = raw(
      gw,
      `POST /files HTTP/1.1\r\nHost: x\r\nContent-Type: video/mp4\r\nContent-Length: ${total}\r\nConnection: close\r\n\r\n`,
    );
    for (let i = 0; i < 16; i++) {
      await new Promise((r) => setTimeout(r, 250)); // 4 s in all, four times bodyIdleMs
      c.sock.write(Buffer.alloc(4096, i));
    }
    await c.closed;
    expect(c.received()).toMatch(/^HTTP\/1\.1 201/);
  });

  it('cuts a download whose client reads nothing', async () => {
    const f = await upload(gw, patternBytes(32 * MiB, 11));
    const id = f.url.split('/').pop();
    raw(gw, `GET /files/${id} HTTP/1.1\r\nHost: x\r\n\r\n`, { localAddress: '127.0.3.1', pause: true });
    await until(() => established(gw, '127.0.3.1') === 1, 2000, 50);
    // Node gives a stalled write a second look: cut between 1 and 2 timeouts
    await until(() => established(gw, '127.0.3.1') === 0, 4000, 50);
  });

  it('gives a stalled download’s storage connection back: the pool still serves others', async () => {
    // two upstream connections per storage, no download cut for a minute: only the release
    // after upstreamReleaseMs can free them
    const g = await s.startGateway({
      upstreamConnections: 2,
      timeouts: { downloadIdleMs: 60_000, upstreamReleaseMs: 200, upstreamQueueMs: 3000 },
    });
    const f = await upload(g, patternBytes(32 * MiB, 12));
    const id = f.url.split('/').pop();
    for (let i = 0; i < 4; i++) {
      raw(g, `GET /files/${id} HTTP/1.1\r\nHost: x\r\n\r\n`, { localAddress: '127.0.3.2', pause: true });
    }
    await until(() => established(g, '127.0.3.2') === 4, 2000, 50);
    await new Promise((r) => setTimeout(r, 1000));
    const t0 = Date.now();
    const r = await fetch(`${g.url}/files/${id}`);
    expect(r.status).toBe(200);
    expect((await r.arrayBuffer()).byteLength).toBe(32 * MiB);
    expect(Date.now() - t0).toBeLessThan(3000);
    expect(established(g, '127.0.3.2')).toBe(4); // the stalled readers are still there
    // and one of them that reads again gets the rest of its bytes (a new storage request)
    const resumed = raw(g, `GET /files/${id} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`, {
      localAddress: '127.0.3.3',
      pause: true,
    });
    await new Promise((r) => setTimeout(r, 800));
    let n = 0;
    resumed.sock.removeAllListeners('data');
    resumed.sock.on('data', (d) => {
      n += d.length;
    });
    resumed.sock.resume();
    await resumed.closed;
    expect(n).toBeGreaterThan(32 * MiB); // head + every byte
    expect(n).toBeLessThan(32 * MiB + 2048);
    await g.close();
  }, 60_000);
});

describe('request heads', () => {
  it('closes a connection whose request head does not arrive within headersMs (slowloris)', async () => {
    const g = await s.startGateway({ timeouts: { headersMs: 1000 } });
    const c = raw(g, 'GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ');
    const dripping = setInterval(() => c.sock.write('a'), 200); // bytes keep coming, the head never ends
    const ms = await Promise.race([c.closed, new Promise<number>((r) => setTimeout(() => r(-1), 6000))]);
    clearInterval(dripping);
    expect(ms).toBeGreaterThanOrEqual(900);
    expect(ms).toBeLessThan(3000);
    await g.close();
  });

  it('the admin listener bounds its connections as the nodes do: a head that never ends is cut after 5 s, big heads get 431', async () => {
    const admin = new URL(gw.adminUrl as string);
    const sock = connect({ host: admin.hostname, port: Number(admin.port) });
    sockets.push(sock);
    sock.on('error', () => {});
    const t0 = Date.now();
    const closed = new Promise<number>((r) => sock.on('close', () => r(Date.now() - t0)));
    sock.on('connect', () => sock.write('GET /metrics HTTP/1.1\r\nHost: x\r\n'));
    const ms = await Promise.race([closed, new Promise<number>((r) => setTimeout(() => r(-1), 9000))]);
    expect(ms, 'closed after ms (-1: still open after 9 s)').toBeGreaterThanOrEqual(4000);
    expect(ms).toBeLessThan(8000);
    const big = await fetch(`${gw.adminUrl}/healthz`, { headers: { 'x-big': 'a'.repeat(9 * 1024) } });
    expect(big.status).toBe(431);
    expect((await fetch(`${gw.adminUrl}/healthz`)).status).toBe(200);
  }, 20_000);

  it('answers a request head past maxHeaderBytes with 431', async () => {
    const r = await fetch(`${gw.url}/healthz`, { headers: { 'x-big': 'a'.repeat(20 * 1024) } });
    expect(r.status).toBe(431);
  });
});

describe('concurrency caps', () => {
  it('answers connections past connectionsPerClient with a 429 problem and closes them', async () => {
    const g = await s.startGateway({ limits: { connectionsPerClient: 2 } });
    const held = [0, 1].map(() => raw(g, '', { localAddress: '127.0.4.1' }));
    await until(() => established(g, '127.0.4.1') === 2, 2000, 50);
    const third = raw(g, 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n', { localAddress: '127.0.4.1' });
    await third.closed;
    expect(third.received()).toMatch(/^HTTP\/1\.1 429/);
    expect(third.received()).toContain('DSM_ERR_TOO_MANY_REQUESTS');
    // another address is not affected
    const other = raw(g, 'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', {
      localAddress: '127.0.4.2',
    });
    await other.closed;
    expect(other.received()).toMatch(/^HTTP\/1\.1 200/);
    for (const h of held) h.sock.destroy();
    await g.close();
  });

  it('answers uploads past concurrentUploads and downloads past downloadsPerClient with 429', async () => {
    const g = await s.startGateway({ limits: { concurrentUploads: 1, downloadsPerClient: 1 } });
    const slow = raw(g, `POST /files HTTP/1.1\r\nHost: x\r\nContent-Length: ${MiB}\r\n\r\nabc`);
    await new Promise((r) => setTimeout(r, 300));
    const second = await fetch(`${g.url}/files`, { method: 'POST', body: 'x' });
    expect(second.status).toBe(429);
    expect(((await second.json()) as { code: string }).code).toBe('DSM_ERR_TOO_MANY_REQUESTS');
    slow.sock.destroy();

    const f = await upload(gw, patternBytes(32 * MiB, 13));
    const id = f.url.split('/').pop();
    raw(g, `GET /files/${id} HTTP/1.1\r\nHost: x\r\n\r\n`, { localAddress: '127.0.4.3', pause: true });
    await new Promise((r) => setTimeout(r, 300));
    const dl = raw(g, `GET /files/${id} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`, {
      localAddress: '127.0.4.3',
    });
    await dl.closed;
    expect(dl.received()).toMatch(/^HTTP\/1\.1 429/);
    // another address still downloads
    const r = await fetch(`${g.url}/files/${id}`);
    expect(r.status).toBe(200);
    await r.arrayBuffer();
    await g.close();
  });
});

describe('trusted proxies (a CDN edge or load balancer in front)', () => {
  it('counts a trusted proxy’s requests under the forwarded client, and ignores X-Forwarded-For from anyone else', async () => {
    const g = await s.startGateway({
      limits: { connectionsPerClient: 2, downloadsPerClient: 1, trustedProxies: ['127.0.5.0/24'] },
    });
    const f = await upload(gw, patternBytes(32 * MiB, 17));
    const id = f.url.split('/').pop();
    const get = (from: string, xff: string, pause = false) =>
      raw(g, `GET /files/${id} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: ${xff}\r\nConnection: close\r\n\r\n`, {
        localAddress: from,
        pause,
      });
    // the proxy holds more connections than connectionsPerClient: it carries many clients
    const held = [0, 1, 2].map(() => raw(g, '', { localAddress: '127.0.5.1' }));
    await until(() => established(g, '127.0.5.1') === 3, 2000, 50);
    // client A (forwarded by the proxy) takes its one download and stalls
    get('127.0.5.1', '198.51.100.7', true);
    await new Promise((r) => setTimeout(r, 300));
    // client B through the same proxy still downloads (the last hop that is not a proxy counts)
    const b = get('127.0.5.1', '198.51.100.7, 203.0.113.9, 127.0.5.2');
    await b.closed;
    expect(b.received()).toMatch(/^HTTP\/1\.1 200/);
    // client A again: its share is taken
    const a2 = get('127.0.5.1', '198.51.100.7');
    await a2.closed;
    expect(a2.received()).toMatch(/^HTTP\/1\.1 429/);
    // an untrusted peer cannot pick its count with the header: its second download is a 429
    get('127.0.6.1', '192.0.2.1', true);
    await new Promise((r) => setTimeout(r, 300));
    const spoof = get('127.0.6.1', '192.0.2.2');
    await spoof.closed;
    expect(spoof.received()).toMatch(/^HTTP\/1\.1 429/);
    for (const h of held) h.sock.destroy();
    await g.close();
  });

  it('refuses a trustedProxies entry that is not an address or a block at start-up', async () => {
    await expect(s.startGateway({ limits: { trustedProxies: ['10.0.0.0/40'] } })).rejects.toThrow(
      /limits\.trustedProxies/,
    );
  });
});

describe('problem details', () => {
  it('never carry node addresses or cluster texts (they go to the log)', async () => {
    const [dead] = [await freePortRange(1)];
    const g = await s.startGateway({ trackers: [`127.0.0.1:${dead}`], timeouts: { upstreamQueueMs: 500 } });
    const up = await fetch(`${g.url}/files`, { method: 'POST', body: 'hello' });
    const p = (await up.json()) as { detail: string; status: number; requestId: string };
    expect(up.status).toBe(503);
    expect(p.detail).not.toMatch(/127\.0\.0\.1|\d{4,5}|\//);
    expect(p.requestId).toBeTruthy();
    const missing = await fetch(
      `${gw.url}/files/${encodePublicId({ appId: 'tnvideo', userId: 'tnv001', fileId: '6b06ddf206309af4e4055cd4bf8056000190' })}`,
    );
    const m = (await missing.json()) as { detail: string };
    expect(missing.status).toBe(404);
    expect(m.detail).toBe('no such file');
    await g.close();
  });
});
