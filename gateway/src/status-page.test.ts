import { existsSync, mkdirSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePortRange, startTestCluster, type TestCluster, until } from '@dsm/testkit';
import { type Browser, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ErrorRing,
  errorRingOf,
  mergeStorages,
  recordProblem,
  StatusCache,
  type StatusData,
  vipLines,
} from './status-page.ts';
import { type Stack, startStack } from './test-support.ts';

// The admin listener's status page, in Debian's Chromium (headless, playwright-core), on a real
// cluster: 1 tracker (which holds the VIP 127.0.0.1: a local interface has it), 1 id server,
// 2 groups of 2 storages, every node with an admin listener. The gateway also lists a tracker
// and an id server that do not exist, which the page must show as not answering.

const CHROMIUM = '/usr/bin/chromium';
const ARGS = ['--no-sandbox', '--disable-background-networking', '--disable-gpu', '--no-first-run'];
const HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">';
const SCREENSHOT = join(tmpdir(), 'dsm-status-page', 'status.png');

describe('status page helpers', () => {
  it('merges the trackers views into one row per storage, the worst state first, and says they disagree', () => {
    const storage = (state: string, beatTime: number) => ({
      group: 'g1',
      hostname: HOSTILE,
      host: '10.0.0.1',
      port: 23000,
      state,
      beatTime,
      freeBytes: 5,
      totalBytes: 10,
      load: 1,
      pendingHeals: 0,
      writable: true,
    });
    const groups = mergeStorages([
      { address: 't1', status: { now: 1000, groups: [{ name: 'g1', storages: [storage('ACTIVE', 900)] }] } },
      { address: 't2', status: { now: 1000, groups: [{ name: 'g1', storages: [storage('OFFLINE', 100)] }] } },
      // hostile shapes are ignored, not thrown on
      { address: 't3', status: { now: 'x', groups: [null, { name: 1, storages: [7, null] }] } },
    ]);
    expect(groups).toHaveLength(1);
    const row = groups[0]?.storages[0];
    expect(row).toMatchObject({
      address: '10.0.0.1:23000',
      state: 'OFFLINE',
      disagree: true,
      beatAgeMs: 100,
    });
    expect(row?.views.map((v) => `${v.tracker}:${v.state}`)).toEqual(['t1:ACTIVE', 't2:OFFLINE']);
    expect(row?.hostname).toBe(HOSTILE);
  });

  it('reads the VIP lines of a node /metrics text', () => {
    const text = [
      '# HELP dsm_node_vip_held x',
      'dsm_node_vip_held{vip="10.0.0.100"} 1',
      'dsm_node_vip_held{role="tracker",vip="10.0.0.101"} 0',
      'dsm_node_vip_heldx{vip="1.1.1.1"} 1',
    ].join('\n');
    expect(vipLines(text)).toEqual([
      { vip: '10.0.0.100', held: true },
      { vip: '10.0.0.101', held: false },
    ]);
  });

  it('runs one collection at a time for every viewer and reuses it for the TTL after it settles', async () => {
    let calls = 0;
    let fail = false;
    const cache = new StatusCache(async () => {
      calls++;
      await new Promise((r) => setTimeout(r, 120));
      if (fail) throw new Error('down');
      return calls;
    }, 100);
    // a collection slower than the TTL is still shared by everyone who asks meanwhile
    const first = await Promise.all([cache.get(), cache.get(), cache.get()]);
    expect(first).toEqual([1, 1, 1]);
    expect(await cache.get()).toBe(1);
    await new Promise((r) => setTimeout(r, 150));
    fail = true;
    await expect(cache.get()).rejects.toThrow('down');
    fail = false;
    // a failure is not kept: the next viewer starts a new collection
    expect(await cache.get()).toBe(3);
    expect(calls).toBe(3);
  });

  it('keeps only the last 50 5xx problems, newest first', () => {
    const core = {};
    for (let i = 0; i < 120; i++) {
      recordProblem(core, { status: i % 2 ? 503 : 404, body: { code: `C${i}`, detail: 'd' } }, {});
    }
    const kept = errorRingOf(core).list();
    expect(kept).toHaveLength(50);
    expect(kept[0]).toMatchObject({ code: 'C119', status: 503 });
    expect(kept.every((e) => e.status === 503)).toBe(true);
    const ring = new ErrorRing(3);
    for (const n of [1, 2, 3, 4]) ring.push({ time: n, status: 500, code: String(n), detail: '' });
    expect(ring.list().map((e) => e.code)).toEqual(['4', '3', '2']);
  });
});

describe('status page in Chromium on a live cluster', () => {
  let s: Stack;
  let browser: Browser;
  let page: Page;
  let adminUrl = '';
  let trackerAdmin = '';
  const cspViolations: string[] = [];

  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) {
      throw new Error(`${CHROMIUM} is required for the status page test (Debian package "chromium")`);
    }
    const shape = { trackers: 1, ids: 1, groups: ['group001', 'group002'], storagesPerGroup: 2 };
    const nodes = 1 + 1 + 4;
    const base = await freePortRange(2 * nodes);
    trackerAdmin = `http://127.0.0.1:${base + nodes}`;
    const idAddress = `127.0.0.1:${base + 1}`;
    const [stack, b] = await Promise.all([
      startStack(
        'sqlite+memory',
        {
          trackers: [`127.0.0.1:${base}`, '127.0.0.1:1'],
          admin: {
            listen: '127.0.0.1:0',
            idServers: [idAddress, '127.0.0.1:1'],
            nodeAdmins: [trackerAdmin, `http://127.0.0.1:${base + nodes + 1}`],
          },
        },
        {
          ...shape,
          basePort: base,
          adminPortOffset: nodes,
          extra: {
            tracker: { admin: { listen: trackerAdmin.slice('http://'.length), vips: ['127.0.0.1'] } },
          },
        },
      ),
      chromium.launch({ executablePath: CHROMIUM, args: ARGS, headless: true }),
    ]);
    s = stack;
    browser = b;
    expect(s.cluster.addresses('id')).toEqual([idAddress]);
    adminUrl = s.gateway.adminUrl as string;
    expect(adminUrl).toMatch(/^http:\/\//);
    page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on('console', (m) => {
      if (/Content Security Policy/i.test(m.text())) cspViolations.push(m.text());
    });
  }, 90_000);

  afterAll(async () => {
    await browser?.close();
    await s?.stop();
  });

  it('serves /status.json with every group, storage, tracker, id server, the VIP holder and the errors', async () => {
    recordProblem(
      s.gateway.core,
      { status: 500, body: { code: 'DSM_ERR_TEST', detail: HOSTILE } },
      { requestId: 'req-hostile', method: 'GET', path: '/x' },
    );
    const r = await fetch(`${adminUrl}/status.json`);
    expect(r.status).toBe(200);
    expect(r.headers.get('cache-control')).toBe('no-store');
    const d = (await r.json()) as StatusData;
    expect(d.groups.map((g) => g.name)).toEqual(['group001', 'group002']);
    const storages = d.groups.flatMap((g) => g.storages);
    expect(storages.map((x) => x.address).sort()).toEqual(s.cluster.addresses('storage').sort());
    for (const x of storages) {
      expect(x).toMatchObject({ state: 'ACTIVE', writable: true, disagree: false });
      expect(x.totalBytes).toBeGreaterThan(0);
      expect(x.freeBytes).toBeGreaterThan(0);
      expect(x.beatAgeMs).toBeGreaterThanOrEqual(0);
      expect(x.beatAgeMs).toBeLessThan(5000);
      expect(typeof x.pendingHeals).toBe('number');
    }
    expect(d.trackers).toEqual([
      expect.objectContaining({ address: s.cluster.addresses('tracker')[0], ok: true, storages: 4 }),
      expect.objectContaining({ address: '127.0.0.1:1', ok: false, error: expect.any(String) }),
    ]);
    expect(d.idServers).toEqual([
      expect.objectContaining({ address: s.cluster.addresses('id')[0], ok: true }),
      expect.objectContaining({ address: '127.0.0.1:1', ok: false, error: expect.any(String) }),
    ]);
    expect(d.vips).toEqual([{ vip: '127.0.0.1', holders: [trackerAdmin] }]);
    expect(d.nodeAdmins.map((n) => n.ok)).toEqual([true, true]);
    expect(d.errors[0]).toMatchObject({
      status: 500,
      code: 'DSM_ERR_TEST',
      detail: HOSTILE,
      requestId: 'req-hostile',
    });
  });

  it('renders every group and storage ACTIVE under a nonce CSP, hostile text as text', async () => {
    const res = await page.goto(`${adminUrl}/status`);
    expect(res?.status()).toBe(200);
    const csp = res?.headers()['content-security-policy'] ?? '';
    expect(csp).toMatch(/default-src 'none'/);
    expect(csp).toMatch(/script-src 'nonce-[A-Za-z0-9+/=]{20,}'/);
    expect(csp).not.toMatch(/unsafe-inline|unsafe-eval/);
    await page.waitForSelector('tr[data-storage]');
    for (const g of ['group001', 'group002']) expect(await page.locator(`#group-${g}`).count()).toBe(1);
    const states = await page.$$eval('tr[data-storage]', (rows) =>
      rows.map((r) => `${(r as HTMLElement).dataset.storage}=${(r as HTMLElement).dataset.state}`),
    );
    expect(states.sort()).toEqual(
      s.cluster
        .addresses('storage')
        .map((a) => `${a}=ACTIVE`)
        .sort(),
    );
    expect(await page.locator('tr[data-vip="127.0.0.1"]').textContent()).toContain(trackerAdmin);
    expect(await page.locator('tr[data-id-server="127.0.0.1:1"]').textContent()).toContain('no');
    // the hostile detail is on the page as text: no element was made of it, no script ran
    expect(await page.locator('#errors').textContent()).toContain(HOSTILE);
    expect(await page.evaluate(() => (window as unknown as { __pwned?: number }).__pwned)).toBeUndefined();
    expect(await page.locator('#root script, #root img').count()).toBe(0);
    expect(await page.getAttribute('#fresh', 'data-state')).toBe('fresh');
    expect(await page.locator('tr[data-tracker="127.0.0.1:1"]').textContent()).toContain('no');
    expect(cspViolations).toEqual([]);
  });

  it('renders a hostile storage hostname and tracker error from /status.json as text', async () => {
    const real = (await (await fetch(`${adminUrl}/status.json`)).json()) as StatusData;
    const first = real.groups[0]?.storages[0];
    if (!first) throw new Error('no storage in /status.json');
    first.hostname = HOSTILE;
    first.address = `${HOSTILE}:1`;
    const dead = real.trackers.find((t) => !t.ok);
    if (!dead) throw new Error('no failing tracker in /status.json');
    dead.error = HOSTILE;
    const other = await browser.newPage();
    try {
      await other.route('**/status.json', (r) =>
        r.fulfill({ status: 200, contentType: 'application/json', body: JSON.stringify(real) }),
      );
      await other.goto(`${adminUrl}/status`);
      await other.waitForSelector('tr[data-storage]');
      const rows = await other.$$eval('tr[data-storage]', (rs) =>
        rs.map((r) => (r as HTMLElement).dataset.storage),
      );
      expect(rows).toContain(first.address);
      const text = await other.locator('#root').textContent();
      expect(text).toContain(`${HOSTILE}:1`);
      expect(await other.locator(`tr[data-tracker="${dead.address}"]`).textContent()).toContain(HOSTILE);
      expect(await other.locator('#root script, #root img').count()).toBe(0);
      expect(await other.evaluate(() => (window as unknown as { __pwned?: number }).__pwned)).toBeUndefined();
    } finally {
      await other.close();
    }
  });

  it('turns a SIGKILLed storage OFFLINE without a reload, and says when the data is stale', async () => {
    await page.evaluate(() => {
      (window as unknown as { __sameDocument: boolean }).__sameDocument = true;
    });
    const name = 'group002-s2';
    const victim = s.cluster.nodes.get(name);
    const address = s.cluster.spec(name).config.listen as string;
    expect(victim?.pid).toBeGreaterThan(0);
    await s.cluster.kill(name); // SIGKILL of its pid, as a crash
    const t0 = Date.now();
    await page.waitForSelector(`tr[data-storage="${address}"][data-state="OFFLINE"]`, { timeout: 8000 });
    const ms = Date.now() - t0;
    process.stdout.write(`status page: ${address} OFFLINE on the page ${ms} ms after SIGKILL\n`);
    expect(
      await page.evaluate(() => (window as unknown as { __sameDocument?: boolean }).__sameDocument),
    ).toBe(true);
    const others = await page.$$eval(`tr[data-storage]`, (rows) =>
      rows.map((r) => (r as HTMLElement).dataset.state),
    );
    expect(others.filter((x) => x === 'ACTIVE')).toHaveLength(3);
    mkdirSync(join(tmpdir(), 'dsm-status-page'), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    expect(statSync(SCREENSHOT).size).toBeGreaterThan(1000);
    process.stdout.write(`status page screenshot: ${SCREENSHOT}\n`);

    // the fetch fails: the page says so and keeps the last data
    await page.route('**/status.json', (r) => r.abort());
    await page.waitForSelector('#fresh[data-state="failed"]', { timeout: 8000 });
    expect(await page.locator('tr[data-storage]').count()).toBe(4);
    await page.unroute('**/status.json');
    await page.waitForSelector('#fresh[data-state="fresh"]', { timeout: 8000 });
  }, 30_000);
});

describe('status page of a multi-process gateway (2 workers)', () => {
  let t: TestCluster;
  let admin = '';

  beforeAll(async () => {
    t = await startTestCluster('sqlite+memory', {
      trackers: 1,
      groups: ['group001'],
      storagesPerGroup: 2,
      gateways: 1,
      gatewayWorkers: 2,
      extra: { gateway: { admin: { listen: '127.0.0.1:0' }, statCacheMs: 0, locateCacheMs: 0 } },
    });
    await t.waitActive(2, 20_000);
    admin = String(t.cluster.nodes.get('gateway1')?.ready.adminUrl);
  }, 90_000);

  afterAll(async () => {
    await t?.stop();
  });

  it("serves /status and /status.json from the primary, with a worker's 5xx in the last errors", async () => {
    const page = await fetch(`${admin}/status`);
    expect(page.status).toBe(200);
    expect(page.headers.get('content-security-policy')).toMatch(/script-src 'nonce-/);
    expect(await page.text()).toContain('status.json');

    const d = (await (await fetch(`${admin}/status.json`)).json()) as StatusData;
    expect(d.groups.map((g) => g.name)).toEqual(['group001']);
    expect(d.groups[0]?.storages.map((x) => `${x.address}=${x.state}`).sort()).toEqual(
      t.cluster
        .addresses('storage')
        .map((a) => `${a}=ACTIVE`)
        .sort(),
    );

    // a real 5xx: a file whose group has no storage left
    const gw = String(t.cluster.nodes.get('gateway1')?.ready.url);
    const up = await fetch(`${gw}/files?filename=a.bin`, { method: 'POST', body: new Uint8Array(1000) });
    expect(up.status).toBe(201);
    const { url } = (await up.json()) as { url: string };
    for (const name of ['group001-s1', 'group001-s2']) await t.cluster.kill(name);
    const down = await fetch(url);
    expect(down.status).toBeGreaterThanOrEqual(500);
    const requestId = down.headers.get('x-request-id');
    expect(requestId).toBeTruthy();
    await down.body?.cancel();
    await until(
      async () => {
        const e = (await (await fetch(`${admin}/status.json`)).json()) as StatusData;
        return e.errors.some((x) => x.status === down.status && x.requestId === requestId);
      },
      5000,
      200,
      "the worker's 5xx on the primary's /status.json",
    );
  }, 60_000);
});
