/**
 * The tracker's admin listener (admin.listen, @dsm/server): /metrics moves with the requests a
 * tracker serves, /readyz reports the database and the cache, and the listener obeys allowFrom.
 */
import { Command, encodeAddrsRequest } from '@dsm/packets';
import { BACKEND_NAMES } from '@dsm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ask, createBackend, FakeStorage, type TrackerBackend } from './test-support.ts';

/** The value of one sample of the Prometheus text, or 0 when it is not there. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const m = /^[^{ ]+(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (!m) continue;
    const have = new Map([...(m[1] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => have.get(k) === v)) return Number(m[2]);
  }
  return 0;
}

async function metrics(url: string): Promise<string> {
  const r = await fetch(`${url}/metrics`);
  expect(r.status).toBe(200);
  expect(r.headers.get('content-type')).toContain('text/plain');
  return r.text();
}

describe.each(BACKEND_NAMES)('tracker admin listener on %s', (backendName) => {
  let backend: TrackerBackend;
  beforeAll(async () => {
    backend = await createBackend(backendName);
  });
  afterAll(async () => {
    await backend?.cleanup();
  });

  it('serves /metrics that move with joins, beats and lookups, /healthz and /readyz', async () => {
    const t = await backend.start({ admin: { listen: '127.0.0.1:0' } });
    const url = t.ready.admin as string;
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const before = await metrics(url);
    expect(sample(before, 'dsm_node_requests_total', { role: 'tracker', command: 'TRACKER_JOIN_EXT' })).toBe(
      0,
    );

    const s = await FakeStorage.active(t.port, { port: 23001, freeBytes: 5000, totalBytes: 9000 });
    const user = `u${Date.now()}`;
    const body = encodeAddrsRequest({ appId: 'tnvideo', userId: user, fileId: '' });
    await ask(t.port, Command.TRACKER_ADDRS, body);
    await ask(t.port, Command.TRACKER_ADDRS, body);

    const after = await metrics(url);
    const req = (command: string, status = 'ok') =>
      sample(after, 'dsm_node_requests_total', { role: 'tracker', command, status });
    expect(req('TRACKER_JOIN_EXT')).toBe(1);
    expect(req('TRACKER_BEAT_EXT')).toBe(1);
    expect(req('TRACKER_ADDRS')).toBe(2);
    expect(sample(after, 'dsm_node_request_duration_seconds_count', { command: 'TRACKER_ADDRS' })).toBe(2);
    expect(sample(after, 'dsm_node_bytes_in_total')).toBeGreaterThan(
      sample(before, 'dsm_node_bytes_in_total'),
    );
    expect(sample(after, 'dsm_node_bytes_out_total')).toBeGreaterThan(
      sample(before, 'dsm_node_bytes_out_total'),
    );
    expect(sample(after, 'dsm_node_connections')).toBe(1); // the fake storage's
    expect(sample(after, 'dsm_tracker_route_lookups_total', { source: 'assigned' })).toBe(1);
    expect(sample(after, 'dsm_tracker_route_lookups_total', { source: 'cache' })).toBe(1);
    expect(sample(after, 'dsm_tracker_storages', { group: 'group001', state: 'ACTIVE' })).toBe(1);
    expect(sample(after, 'dsm_tracker_storage_free_bytes', { storage: '127.0.0.1:23001' })).toBe(5000);
    expect(sample(after, 'dsm_tracker_storage_total_bytes', { storage: '127.0.0.1:23001' })).toBe(9000);
    expect(sample(after, 'dsm_tracker_storage_writable', { storage: '127.0.0.1:23001' })).toBe(1);
    expect(sample(after, 'dsm_node_process_resident_memory_bytes')).toBeGreaterThan(0);

    // the storage's connection closing marks it OFFLINE, and the gauges say so
    s.close();
    await new Promise((r) => setTimeout(r, 200));
    const off = await metrics(url);
    expect(sample(off, 'dsm_tracker_storages', { group: 'group001', state: 'OFFLINE' })).toBe(1);
    expect(sample(off, 'dsm_tracker_storages', { group: 'group001', state: 'ACTIVE' })).toBe(0);
    expect(sample(off, 'dsm_node_connections')).toBe(0);

    expect(await (await fetch(`${url}/healthz`)).json()).toEqual({ status: 'ok' });
    const ready = await fetch(`${url}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toEqual({
      status: 'ready',
      checks: [
        { name: 'database', ok: true },
        { name: 'cache', ok: true },
      ],
    });
    expect((await fetch(`${url}/metrics`, { method: 'POST' })).status).toBe(405);
    expect((await fetch(`${url}/nope`)).status).toBe(404);
  });

  it('counts refused requests by reason', async () => {
    const t = await backend.start({
      admin: { listen: '127.0.0.1:0' },
      auth: { required: true, keys: [{ id: 'k1', secret: 'x'.repeat(32) }] },
    });
    const url = t.ready.admin as string;
    const r = await ask(t.port, Command.TRACKER_STATUS);
    expect(r.header.status).not.toBe(0);
    const m = await metrics(url);
    expect(sample(m, 'dsm_node_refused_total', { reason: 'unauthenticated' })).toBe(1);
  });
});

describe('tracker admin listener', () => {
  let backend: TrackerBackend;
  beforeAll(async () => {
    backend = await createBackend('sqlite+memory');
  });
  afterAll(async () => {
    await backend?.cleanup();
  });

  it('is not started without admin.listen', async () => {
    const t = await backend.start();
    expect(t.ready.admin).toBeUndefined();
  });

  it('answers /readyz 503 naming the database while the database is down', async () => {
    const t = await backend.start({
      admin: { listen: '127.0.0.1:0' },
      database: 'mysql://root@127.0.0.1:1/tnv_trackerdb',
    });
    const r = await fetch(`${t.ready.admin}/readyz`);
    expect(r.status).toBe(503);
    const body = (await r.json()) as {
      status: string;
      checks: { name: string; ok: boolean; error?: string }[];
    };
    expect(body.status).toBe('not ready');
    expect(body.checks.find((c) => c.name === 'database')).toMatchObject({ ok: false });
    expect(body.checks.find((c) => c.name === 'cache')).toEqual({ name: 'cache', ok: true });
  });

  it('says which VIP of admin.vips this host holds (dsm_node_vip_held)', async () => {
    // 127.0.0.1 is on lo; 10.213.0.99 is on no interface of this host
    const t = await backend.start({ admin: { listen: '127.0.0.1:0', vips: ['127.0.0.1', '10.213.0.99'] } });
    const m = await metrics(t.ready.admin as string);
    expect(sample(m, 'dsm_node_vip_held', { vip: '127.0.0.1' })).toBe(1);
    expect(m).toMatch(/^dsm_node_vip_held\{vip="10\.213\.0\.99",role="tracker"\} 0$/m);
    await expect(backend.start({ admin: { listen: '127.0.0.1:0', vips: ['10.0.0.1/32'] } })).rejects.toThrow(
      /admin\.vips/,
    );
  });

  it('cuts a connection whose request head never ends after 5 s of silence', async () => {
    const t = await backend.start({ admin: { listen: '127.0.0.1:0' } });
    const { port } = new URL(t.ready.admin as string);
    const { connect } = await import('node:net');
    // the close is listened for from the start, and an error is reported: a connection refused
    // or closed before it was up fails the test with what happened (a CI run once timed out here)
    let received = '';
    const open = (head: string) =>
      new Promise<{ closedAt: Promise<number> }>((resolve, reject) => {
        const started = Date.now();
        let up = false;
        const s = connect({ host: '127.0.0.1', port: Number(port) }, () => {
          up = true;
          s.write(head);
          resolve({ closedAt });
        });
        s.on('data', (d) => {
          received += d.toString('latin1');
        });
        const closedAt = new Promise<number>((r) => s.on('close', () => r(Date.now() - started)));
        s.on('error', (e) => {
          if (!up) reject(e);
        });
        void closedAt.then((ms) => {
          if (!up) reject(new Error(`closed after ${ms} ms, before the connection was up`));
        });
      });
    // a head that never ends (slowloris) is cut after 5 s of silence, not held for ever
    const slow = await open('GET /metrics HTTP/1.1\r\nHost: x\r\n');
    // a connection still open after 12 s fails here, saying what the server sent meanwhile (a CI
    // run and a local full run once timed out at 20 s without telling)
    const ms = await Promise.race([
      slow.closedAt,
      new Promise<number>((r) => setTimeout(() => r(-1), 12_000)),
    ]);
    expect(ms, `ms to the close (-1: open after 12 s; the server sent ${JSON.stringify(received)})`).not.toBe(
      -1,
    );
    expect(ms).toBeGreaterThanOrEqual(4000);
    expect(ms).toBeLessThan(8000);
  }, 20_000);

  it('closes connections from addresses outside allowFrom', async () => {
    const t = await backend.start({ admin: { listen: '127.0.0.1:0' }, allowFrom: ['10.213.0.0/24'] });
    await expect(fetch(`${t.ready.admin}/metrics`)).rejects.toThrow();
  });

  it('refuses to start when admin.listen cannot be bound, naming the key', async () => {
    const t = await backend.start({ admin: { listen: '127.0.0.1:0' } });
    const port = new URL(t.ready.admin as string).port;
    await expect(backend.start({ admin: { listen: `127.0.0.1:${port}` } })).rejects.toThrow(/admin\.listen/);
  });
});
