import { ping } from '@dsm/client';
import { messageOf } from '@dsm/common/errors';
import { Command, parseAddress } from '@dsm/packets';
import type { GatewayCore } from './core.ts';

/**
 * The status page of the admin listener: `GET /status` (one HTML page, inline CSS and JS under a
 * nonce CSP, no build step) and `GET /status.json` (what it shows). The data: every configured
 * tracker's cluster status (TRACKER_STATUS, merged: one row per storage, the trackers' states
 * side by side when they disagree), a PING of each `admin.idServers`, the `dsm_node_vip_held`
 * lines of each `admin.nodeAdmins` `/metrics`, and the gateway's last 5xx problems (a ring of
 * `ERROR_RING` kept by `recordProblem`, called from app.ts onError). Every cluster request has a
 * 2 s timeout, the address lists are bounded by the config, and one collection serves every
 * viewer for `CACHE_MS`.
 */

export const ERROR_RING = 50;
export const CACHE_MS = 1000;
export const PROBE_TIMEOUT_MS = 2000;
/** A node's `/metrics` read for the VIP lines: at most this many bytes. */
export const METRICS_MAX_BYTES = 1024 * 1024;
const TEXT_MAX = 512;

export interface RecentError {
  /** ms since the epoch */
  time: number;
  status: number;
  code: string;
  detail: string;
  /** The original message when the reply carried a public text instead (admin listener only). */
  internal?: string;
  requestId?: string;
  method?: string;
  path?: string;
}

/** A bounded ring of the last `size` problems. */
export class ErrorRing {
  readonly #items: RecentError[] = [];
  constructor(readonly size = ERROR_RING) {}
  push(e: RecentError): void {
    this.#items.push(e);
    if (this.#items.length > this.size) this.#items.splice(0, this.#items.length - this.size);
  }
  /** Newest first. */
  list(): RecentError[] {
    return [...this.#items].reverse();
  }
}

const rings = new WeakMap<object, ErrorRing>();

/** The error ring of one gateway (one per GatewayCore). */
export function errorRingOf(core: object): ErrorRing {
  let r = rings.get(core);
  if (!r) {
    r = new ErrorRing();
    rings.set(core, r);
  }
  return r;
}

/** app.ts onError: keeps the 5xx problems (the gateway's own faults and the cluster's) for /status. */
export function recordProblem(
  core: object,
  p: { status: number; internal?: string; body: { code: string; detail: string } },
  req: { requestId?: string; method?: string; path?: string },
): void {
  if (p.status < 500) return;
  errorRingOf(core).push({
    time: Date.now(),
    status: p.status,
    code: clip(p.body.code),
    detail: clip(p.body.detail),
    ...(p.internal !== undefined && p.internal !== p.body.detail ? { internal: clip(p.internal) } : {}),
    ...(req.requestId ? { requestId: clip(req.requestId) } : {}),
    ...(req.method ? { method: clip(req.method) } : {}),
    ...(req.path ? { path: clip(req.path) } : {}),
  });
}

// ---------------------------------------------------------------------------------------------
// The data
// ---------------------------------------------------------------------------------------------

export type StorageState = 'ACTIVE' | 'ONLINE' | 'OFFLINE';

export interface StorageView {
  tracker: string;
  state: StorageState;
  beatAgeMs: number | null;
}

export interface StorageRow {
  group: string;
  hostname: string;
  address: string;
  version: string;
  /** The worst state a tracker reports (OFFLINE < ONLINE < ACTIVE). */
  state: StorageState;
  writable: boolean | null;
  freeBytes: number | null;
  totalBytes: number | null;
  load: number | null;
  /** −1: the storage does not know */
  pendingHeals: number | null;
  /** ms since the last join/beat, by the tracker clock; the freshest view */
  beatAgeMs: number | null;
  /** The trackers disagree on the state: each tracker's view. */
  disagree: boolean;
  views: StorageView[];
}

export interface StatusData {
  generatedAt: number;
  groups: { name: string; storages: StorageRow[] }[];
  trackers: { address: string; ok: boolean; error?: string; name?: string; storages?: number; ms: number }[];
  idServers: { address: string; ok: boolean; error?: string; ms: number }[];
  nodeAdmins: { url: string; ok: boolean; error?: string; vips: { vip: string; held: boolean }[] }[];
  /** Each VIP named by a node admin listener, and who holds it now (none, one, or — a split — more). */
  vips: { vip: string; holders: string[] }[];
  errors: RecentError[];
}

export interface StatusSources {
  trackers: readonly string[];
  idServers: readonly string[];
  nodeAdmins: readonly string[];
}

const RANK: Record<StorageState, number> = { OFFLINE: 0, ONLINE: 1, ACTIVE: 2 };

function clip(s: unknown, max = TEXT_MAX): string {
  const t = typeof s === 'string' ? s : s === undefined || s === null ? '' : String(s);
  return t.length > max ? `${t.slice(0, max)}…` : t;
}
function num(v: unknown): number | null {
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}
function stateOf(v: unknown): StorageState {
  return v === 'ACTIVE' || v === 'ONLINE' ? v : 'OFFLINE';
}

export function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

interface TrackerAnswer {
  address: string;
  status?: { now?: unknown; tracker?: unknown; groups?: unknown };
}

/** One row per storage (group + address) from the trackers that answered; the input is hostile. */
export function mergeStorages(answers: TrackerAnswer[]): StatusData['groups'] {
  const rows = new Map<string, StorageRow>();
  for (const a of answers) {
    const s = a.status;
    if (!s || !Array.isArray(s.groups)) continue;
    const now = num(s.now);
    for (const g of s.groups.slice(0, 1024) as { name?: unknown; storages?: unknown }[]) {
      if (!g || typeof g !== 'object' || !Array.isArray(g.storages)) continue;
      for (const x of g.storages.slice(0, 1024) as Record<string, unknown>[]) {
        if (!x || typeof x !== 'object') continue;
        const group = clip(x.group ?? g.name, 64);
        const address = `${clip(x.host, 256)}:${num(x.port) ?? '?'}`;
        const beat = num(x.beatTime);
        const beatAgeMs = now !== null && beat !== null ? Math.max(0, now - beat) : null;
        const view: StorageView = { tracker: a.address, state: stateOf(x.state), beatAgeMs };
        const key = `${group}\u0000${address}`;
        const row = rows.get(key);
        const fresher = !row || (beatAgeMs !== null && (row.beatAgeMs === null || beatAgeMs < row.beatAgeMs));
        const next: StorageRow = fresher
          ? {
              group,
              hostname: clip(x.hostname, 256),
              address,
              version: clip(x.version, 64),
              state: view.state,
              writable: typeof x.writable === 'boolean' ? x.writable : null,
              freeBytes: num(x.freeBytes),
              totalBytes: num(x.totalBytes),
              load: num(x.load),
              pendingHeals: num(x.pendingHeals),
              beatAgeMs,
              disagree: false,
              views: row?.views ?? [],
            }
          : (row as StorageRow);
        next.views.push(view);
        next.state = next.views.reduce<StorageState>(
          (w, v) => (RANK[v.state] < RANK[w] ? v.state : w),
          'ACTIVE',
        );
        next.disagree = new Set(next.views.map((v) => v.state)).size > 1;
        rows.set(key, next);
      }
    }
  }
  const groups = new Map<string, StorageRow[]>();
  for (const r of rows.values()) {
    const list = groups.get(r.group) ?? [];
    list.push(r);
    groups.set(r.group, list);
  }
  return [...groups.entries()]
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([name, storages]) => ({
      name,
      storages: storages.sort((a, b) => (a.address < b.address ? -1 : a.address > b.address ? 1 : 0)),
    }));
}

/** The `dsm_node_vip_held{vip="…"} 0|1` lines of a Prometheus text. */
export function vipLines(text: string): { vip: string; held: boolean }[] {
  const out: { vip: string; held: boolean }[] = [];
  const re = /^dsm_node_vip_held\{(?:[^}]*,)?vip="([^"\\]{1,64})"[^}]*\}\s+([0-9.eE+-]+)/gm;
  for (const m of text.matchAll(re)) {
    out.push({ vip: m[1] as string, held: Number(m[2]) >= 1 });
    if (out.length >= 64) break;
  }
  return out;
}

/** GET `url` with a timeout, reading at most `max` bytes of the body. */
async function boundedText(url: string, ms: number, max: number): Promise<string> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(new Error(`no answer within ${ms} ms`)), ms);
  try {
    const r = await fetch(url, { signal: ac.signal, redirect: 'error' });
    if (!r.ok) {
      await r.body?.cancel();
      throw new Error(`HTTP ${r.status}`);
    }
    const reader = r.body?.getReader();
    if (!reader) return '';
    const parts: Uint8Array[] = [];
    let n = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      n += value.byteLength;
      if (n > max) {
        await reader.cancel();
        throw new Error(`more than ${max} bytes`);
      }
      parts.push(value);
    }
    const all = new Uint8Array(n);
    let o = 0;
    for (const p of parts) {
      all.set(p, o);
      o += p.byteLength;
    }
    return new TextDecoder().decode(all);
  } catch (e) {
    throw ac.signal.aborted ? (ac.signal.reason as Error) : e;
  } finally {
    clearTimeout(timer);
  }
}

/** One collection of everything /status shows. */
export async function collectStatus(core: GatewayCore, src: StatusSources): Promise<StatusData> {
  const timed = async <T>(f: () => Promise<T>) => {
    const t0 = Date.now();
    try {
      return { ok: true as const, value: await withTimeout(f(), PROBE_TIMEOUT_MS), ms: Date.now() - t0 };
    } catch (e) {
      return { ok: false as const, error: clip(messageOf(e)), ms: Date.now() - t0 };
    }
  };
  const [trackers, idServers, nodeAdmins] = await Promise.all([
    Promise.all(
      src.trackers.map(async (address) => {
        const r = await timed(() => core.client.tracker.status(parseAddress(address)));
        return { address, r };
      }),
    ),
    Promise.all(
      src.idServers.map(async (address) => {
        const r = await timed(() => ping(core.client.pool, parseAddress(address), Command.ID_REPLY));
        return r.ok ? { address, ok: true, ms: r.ms } : { address, ok: false, error: r.error, ms: r.ms };
      }),
    ),
    Promise.all(
      src.nodeAdmins.map(async (base) => {
        const url = base.replace(/\/+$/, '');
        const r = await timed(() => boundedText(`${url}/metrics`, PROBE_TIMEOUT_MS, METRICS_MAX_BYTES));
        return r.ok
          ? { url, ok: true, vips: vipLines(r.value) }
          : { url, ok: false, error: r.error, vips: [] as { vip: string; held: boolean }[] };
      }),
    ),
  ]);
  const groups = mergeStorages(
    trackers.flatMap(({ address, r }) =>
      r.ok ? [{ address, status: r.value as TrackerAnswer['status'] }] : [],
    ),
  );
  const vips = new Map<string, string[]>();
  for (const n of nodeAdmins) {
    for (const v of n.vips) {
      const holders = vips.get(v.vip) ?? [];
      if (v.held) holders.push(n.url);
      vips.set(v.vip, holders);
    }
  }
  return {
    generatedAt: Date.now(),
    groups,
    trackers: trackers.map(({ address, r }) =>
      r.ok
        ? {
            address,
            ok: true,
            name: clip(r.value.tracker, 256),
            storages: Array.isArray(r.value.groups)
              ? r.value.groups.reduce((n, g) => n + (Array.isArray(g?.storages) ? g.storages.length : 0), 0)
              : 0,
            ms: r.ms,
          }
        : { address, ok: false, error: r.error, ms: r.ms },
    ),
    idServers,
    nodeAdmins,
    vips: [...vips.entries()].map(([vip, holders]) => ({ vip, holders })),
    errors: errorRingOf(core).list(),
  };
}

/**
 * Collections shared by every viewer: at most one in flight (however long it takes), and its
 * result reused for `ttlMs` after it settles. A failed collection is not kept.
 */
export class StatusCache<T> {
  #value: { settledAt: number; p: Promise<T> } | undefined;
  constructor(
    readonly collect: () => Promise<T>,
    readonly ttlMs = CACHE_MS,
  ) {}
  get(): Promise<T> {
    const v = this.#value;
    if (v && (v.settledAt === 0 || Date.now() - v.settledAt < this.ttlMs)) return v.p;
    const entry = { settledAt: 0, p: this.collect() };
    this.#value = entry;
    entry.p.then(
      () => {
        entry.settledAt = Date.now();
      },
      () => {
        if (this.#value === entry) this.#value = undefined;
      },
    );
    return entry.p;
  }
}

/** The `/status.json` reply. */
export function statusJsonResponse(data: unknown): Response {
  return Response.json(data, {
    headers: { 'Cache-Control': 'no-store', 'X-Content-Type-Options': 'nosniff' },
  });
}

// ---------------------------------------------------------------------------------------------
// The page
// ---------------------------------------------------------------------------------------------

/** How often the page fetches /status.json. */
export const REFRESH_MS = 2000;

/**
 * The `/status` reply. CSP: nothing but the inline `<style>` and `<script>` that carry this
 * reply's nonce, and fetches to the same origin (`connect-src 'self'`); no other script, style,
 * image, frame, form or base. The script builds every node with `textContent` (never
 * `innerHTML`): hostnames and error texts come from the network.
 */
export function statusPageResponse(): Response {
  const nonce = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
  const csp = [
    "default-src 'none'",
    `script-src 'nonce-${nonce}'`,
    `style-src 'nonce-${nonce}'`,
    "connect-src 'self'",
    "img-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; ');
  return new Response(statusPageHtml(nonce), {
    headers: {
      'Content-Type': 'text/html; charset=utf-8',
      'Content-Security-Policy': csp,
      'Cache-Control': 'no-store',
      'X-Content-Type-Options': 'nosniff',
      'Referrer-Policy': 'no-referrer',
    },
  });
}

export function statusPageHtml(nonce: string): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>dsm status</title>
<style nonce="${nonce}">${PAGE_CSS}</style>
</head><body>
<header><h1>dsm status</h1><span id="fresh" class="badge">loading…</span><span id="updated"></span></header>
<main id="root"></main>
<script nonce="${nonce}">${PAGE_JS}</script>
</body></html>`;
}

const PAGE_CSS = `
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d232b}
header{display:flex;gap:12px;align-items:center;padding:10px 16px;background:#1d232b;color:#fff}
h1{font-size:18px;margin:0}
h2{font-size:15px;margin:18px 0 6px}
main{padding:0 16px 24px}
table{border-collapse:collapse;background:#fff;min-width:60%;margin-bottom:6px}
th,td{border:1px solid #d8dce2;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef0f3;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:1px 8px;border-radius:9px;font-size:12px;font-weight:600}
.ACTIVE,.ok{background:#d6f5dd;color:#125c24}
.ONLINE,.warn{background:#fff1c2;color:#6b4e00}
.OFFLINE,.bad{background:#ffd9d9;color:#8a1010}
#fresh.ok{background:#2e7d32;color:#fff}
#fresh.bad{background:#c62828;color:#fff}
.muted{color:#6b7480}
.err{color:#8a1010;white-space:pre-wrap;word-break:break-word}
`;

// The page's script: plain ES2020, no framework. Every text goes through textContent.
const PAGE_JS = `
'use strict';
(function () {
  var REFRESH = ${REFRESH_MS};
  var root = document.getElementById('root');
  var fresh = document.getElementById('fresh');
  var updated = document.getElementById('updated');
  var last = 0;
  var lastError = '';

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function badge(text, cls) { return el('span', 'badge ' + cls, text); }
  function bytes(n) {
    if (typeof n !== 'number') return '?';
    var u = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB']; var i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + ' ' + u[i];
  }
  function age(ms) {
    if (typeof ms !== 'number') return '?';
    if (ms < 1000) return ms + ' ms';
    if (ms < 120000) return (ms / 1000).toFixed(1) + ' s';
    return Math.round(ms / 60000) + ' min';
  }
  function table(headers, rows, id) {
    var t = el('table'); if (id) t.id = id;
    var tr = el('tr'); headers.forEach(function (h) { tr.appendChild(el('th', '', h)); });
    var thead = el('thead'); thead.appendChild(tr); t.appendChild(thead);
    var tb = el('tbody');
    rows.forEach(function (r) {
      var row = el('tr');
      if (r.attrs) Object.keys(r.attrs).forEach(function (k) { row.setAttribute(k, r.attrs[k]); });
      r.cells.forEach(function (c) {
        var td = el('td', c && c.cls ? c.cls : '');
        if (c && c.node) td.appendChild(c.node); else td.textContent = c && typeof c === 'object' ? String(c.text) : String(c);
        row.appendChild(td);
      });
      tb.appendChild(row);
    });
    t.appendChild(tb);
    return t;
  }
  function section(title, body) {
    var s = el('section'); s.appendChild(el('h2', '', title)); s.appendChild(body); return s;
  }

  function render(d) {
    var frag = document.createDocumentFragment();
    var groups = Array.isArray(d.groups) ? d.groups : [];
    var gsec = el('div');
    if (groups.length === 0) gsec.appendChild(el('p', 'muted', 'no storage known to any answering tracker'));
    groups.forEach(function (g) {
      var st = Array.isArray(g.storages) ? g.storages : [];
      var active = st.filter(function (s) { return s.state === 'ACTIVE'; }).length;
      var h = el('h2', '', 'group ' + g.name + ' ');
      h.appendChild(badge(active + '/' + st.length + ' active', active === st.length ? 'ok' : active ? 'warn' : 'bad'));
      gsec.appendChild(h);
      gsec.appendChild(table(
        ['storage', 'hostname', 'state', 'writes', 'free / total', 'load', 'pending heals', 'last beat', 'version'],
        st.map(function (s) {
          var state = el('span');
          state.appendChild(badge(s.state, s.state));
          if (s.disagree && Array.isArray(s.views)) {
            state.appendChild(el('div', 'muted', s.views.map(function (v) { return v.tracker + ': ' + v.state; }).join(', ')));
          }
          return {
            attrs: { 'data-storage': s.address, 'data-group': g.name, 'data-state': s.state },
            cells: [
              s.address, s.hostname,
              { node: state },
              { node: s.writable === null || s.writable === undefined ? el('span', 'muted', '?') : badge(s.writable ? 'yes' : 'no', s.writable ? 'ok' : 'bad') },
              { text: bytes(s.freeBytes) + ' / ' + bytes(s.totalBytes), cls: 'num' },
              { text: s.load === null || s.load === undefined ? '?' : s.load, cls: 'num' },
              { text: s.pendingHeals === null || s.pendingHeals === undefined || s.pendingHeals < 0 ? '?' : s.pendingHeals, cls: 'num' },
              { text: age(s.beatAgeMs), cls: 'num' },
              s.version
            ]
          };
        }), 'group-' + g.name));
    });
    frag.appendChild(gsec);

    var vipBy = {};
    (Array.isArray(d.vips) ? d.vips : []).forEach(function (v) { vipBy[v.vip] = v.holders; });
    frag.appendChild(section('trackers', table(['address', 'answers', 'name', 'storages', 'time', 'error'],
      (d.trackers || []).map(function (t) {
        return { attrs: { 'data-tracker': t.address }, cells: [t.address, { node: badge(t.ok ? 'yes' : 'no', t.ok ? 'ok' : 'bad') },
          t.name || '', t.ok ? t.storages : '', age(t.ms), { text: t.error || '', cls: 'err' }] };
      }))));
    var ids = Array.isArray(d.idServers) ? d.idServers : [];
    frag.appendChild(section('id servers', ids.length ? table(['address', 'answers PING', 'time', 'error'],
      ids.map(function (t) {
        return { attrs: { 'data-id-server': t.address }, cells: [t.address, { node: badge(t.ok ? 'yes' : 'no', t.ok ? 'ok' : 'bad') }, age(t.ms), { text: t.error || '', cls: 'err' }] };
      })) : el('p', 'muted', 'none configured (admin.idServers)')));
    var vips = Array.isArray(d.vips) ? d.vips : [];
    var admins = Array.isArray(d.nodeAdmins) ? d.nodeAdmins : [];
    var vbox = el('div');
    if (vips.length) vbox.appendChild(table(['VIP', 'held by'], vips.map(function (v) {
      var h = Array.isArray(v.holders) ? v.holders : [];
      return { attrs: { 'data-vip': v.vip }, cells: [v.vip, { node: h.length === 1 ? el('span', '', h[0]) : badge(h.length ? 'more than one: ' + h.join(', ') : 'nobody', 'bad') }] };
    }), 'vips'));
    if (admins.length) vbox.appendChild(table(['node admin', 'answers', 'VIPs held', 'error'], admins.map(function (n) {
      var held = (n.vips || []).filter(function (v) { return v.held; }).map(function (v) { return v.vip; });
      return { cells: [n.url, { node: badge(n.ok ? 'yes' : 'no', n.ok ? 'ok' : 'bad') }, held.join(', '), { text: n.error || '', cls: 'err' }] };
    })));
    if (!vips.length && !admins.length) vbox.appendChild(el('p', 'muted', 'not known (admin.nodeAdmins lists none)'));
    frag.appendChild(section('VIPs', vbox));
    var errs = Array.isArray(d.errors) ? d.errors : [];
    frag.appendChild(section('last errors (5xx)', errs.length ? table(['time', 'status', 'code', 'detail', 'request id', 'request'],
      errs.map(function (e) {
        return { attrs: { 'data-error': e.code }, cells: [new Date(e.time).toISOString(), e.status, e.code,
          { text: e.detail + (e.internal ? ' (' + e.internal + ')' : ''), cls: 'err' }, e.requestId || '', (e.method || '') + ' ' + (e.path || '')] };
      }), 'errors') : el('p', 'muted', 'none since start')));
    root.replaceChildren(frag);
  }

  function showFreshness() {
    var a = last ? Date.now() - last : Infinity;
    var stale = !last || a > REFRESH * 3;
    fresh.className = 'badge ' + (lastError || stale ? 'bad' : 'ok');
    fresh.dataset.state = lastError ? 'failed' : stale ? 'stale' : 'fresh';
    fresh.textContent = lastError ? 'fetch failed: ' + lastError + (last ? ' (data ' + age(a) + ' old)' : '')
      : stale ? 'stale (' + (last ? age(a) : 'no data') + ')' : 'live';
    updated.textContent = last ? 'updated ' + new Date(last).toLocaleTimeString() : '';
  }

  function tick() {
    var ac = new AbortController();
    var t = setTimeout(function () { ac.abort(); }, REFRESH * 2);
    fetch('status.json', { cache: 'no-store', signal: ac.signal })
      .then(function (r) { if (!r.ok) throw new Error('HTTP ' + r.status); return r.json(); })
      .then(function (d) { render(d); last = Date.now(); lastError = ''; })
      .catch(function (e) { lastError = e && e.name === 'AbortError' ? 'timeout' : String(e && e.message || e); })
      .finally(function () { clearTimeout(t); showFreshness(); setTimeout(tick, REFRESH); });
  }
  setInterval(showFreshness, 1000);
  tick();
})();
`;
