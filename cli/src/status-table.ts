import type { ClusterStatus } from '@dsm/packets';

function size(n: number): string {
  if (n < 0) return '-';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function ago(now: number, t: number): string {
  if (!t) return '-';
  const s = Math.max(0, Math.round((now - t) / 1000));
  return s < 120 ? `${s}s ago` : `${Math.round(s / 60)}m ago`;
}

/** `dsm status`: one row per storage, grouped. */
export function formatStatus(s: ClusterStatus): string {
  const rows: string[][] = [
    ['GROUP', 'STORAGE', 'HOSTNAME', 'STATE', 'WRITES', 'FREE', 'TOTAL', 'LOAD', 'HEALS', 'LAST BEAT'],
  ];
  for (const g of s.groups) {
    for (const st of g.storages) {
      rows.push([
        g.name,
        `${st.host}:${st.port}`,
        st.hostname,
        st.state,
        // the store's own write probe: "refused" = it fails or stalls (e.g. no GlusterFS quorum)
        st.writable === undefined ? '-' : st.writable ? 'ok' : 'refused',
        size(st.freeBytes),
        size(st.totalBytes),
        String(st.load),
        st.pendingHeals < 0 ? '-' : String(st.pendingHeals),
        ago(s.now, st.beatTime),
      ]);
    }
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  const lines = rows.map((r) =>
    r
      .map((c, i) => c.padEnd(widths[i] ?? 0))
      .join('  ')
      .trimEnd(),
  );
  const groups = s.groups.length;
  const storages = s.groups.reduce((n, g) => n + g.storages.length, 0);
  const active = s.groups.reduce((n, g) => n + g.storages.filter((x) => x.state === 'ACTIVE').length, 0);
  const refusing = s.groups.reduce((n, g) => n + g.storages.filter((x) => x.writable === false).length, 0);
  const warn = refusing ? `, ${refusing} refusing writes` : '';
  return `tracker ${s.tracker}: ${groups} group(s), ${storages} storage(s), ${active} active${warn}\n${lines.join('\n')}\n`;
}

const iso = (t: number) => (t > 0 ? new Date(t).toISOString() : null);
const known = (n: number) => (n < 0 ? null : n);

/**
 * `dsm status --json`: the tracker's view with stable field names (docs/cli.md in README.md
 * "Command line"). Times are ISO 8601 strings (null = never), unknown figures null.
 */
export function statusJson(s: ClusterStatus) {
  return {
    tracker: s.tracker,
    time: new Date(s.now).toISOString(),
    groups: s.groups.map((g) => ({
      name: g.name,
      storages: g.storages.map((st) => ({
        address: `${st.host.includes(':') ? `[${st.host}]` : st.host}:${st.port}`,
        hostname: st.hostname,
        state: st.state,
        writable: st.writable ?? null,
        freeBytes: known(st.freeBytes),
        totalBytes: known(st.totalBytes),
        load: st.load,
        pendingHeals: known(st.pendingHeals),
        version: st.version,
        startTime: iso(st.startTime),
        joinTime: iso(st.joinTime),
        beatTime: iso(st.beatTime),
      })),
    })),
  };
}

/** `dsm groups --json`: the seed's group list (`dsm groups`) as a document. */
export function groupsJson(s: ClusterStatus) {
  return {
    tracker: s.tracker,
    count: s.groups.length,
    groups: s.groups.map((g) => ({
      name: g.name,
      storageCount: g.storages.length,
      activeCount: g.storages.filter((x) => x.state === 'ACTIVE').length,
      storages: g.storages.map((st) => ({
        address: `${st.host.includes(':') ? `[${st.host}]` : st.host}:${st.port}`,
        hostname: st.hostname,
        version: st.version,
        state: st.state,
        startTime: iso(st.startTime),
        joinTime: iso(st.joinTime),
        beatTime: iso(st.beatTime),
      })),
    })),
  };
}
