export type Target =
  | { kind: 'ratio'; min: number }
  | { kind: 'min'; value: number }
  | { kind: 'max'; value: number }
  | { kind: 'atMost'; value: number }
  | { kind: 'none' };

/** Latency percentiles of a measurement, in milliseconds. */
export interface Latency {
  p50: number;
  p99: number;
}

export interface Row {
  name: string;
  /** Measured value for dsm (null = not measured; `note` says why). */
  dsm: number | null;
  /** The comparison value (nginx, a bare Node proxy, an in-process baseline). */
  base: number | null;
  /** What `base` is: `nginx`, `fs+fsync`, … */
  baseLabel: string;
  target: Target;
  /** Unit of the values (MiB/s, ops/s, MiB), shown with the target. */
  unit: string;
  /** Latency of dsm's and of the baseline's requests in this measurement, when known. */
  dsmLatency?: Latency;
  baseLatency?: Latency;
  /** Per-repetition values, for the details. */
  dsmRuns?: number[];
  baseRuns?: number[];
  /** Printed in the table's last column: why a value is missing, what a figure includes. */
  note?: string;
}

/** One measured server and client pair: the reference table (nginx, bare proxies, dsm alike). */
export interface Reference {
  /** What was measured: `4 KiB GET`, `1 GiB GET`, … */
  work: string;
  /** The server side: `nginx`, `Node http proxy → nginx`, `gateway (cache off)`, … */
  server: string;
  /** The client: `wrk -t1 -c64`, `curl`, … */
  client: string;
  value: number | null;
  unit: string;
  latency?: Latency;
  /** CPU of the server processes per request or per GiB, as text. */
  cpu?: string;
  note?: string;
}

export function ratioOf(r: Row): number | null {
  return r.dsm !== null && r.base !== null && r.base > 0 ? r.dsm / r.base : null;
}

/** true/false when the row has a target and was measured, else null. */
export function metOf(r: Row): boolean | null {
  if (r.dsm === null) return null;
  switch (r.target.kind) {
    case 'ratio': {
      const q = ratioOf(r);
      return q === null ? null : q >= r.target.min;
    }
    case 'min':
      return r.dsm >= r.target.value;
    case 'max':
      return r.dsm < r.target.value;
    case 'atMost':
      return r.dsm <= r.target.value;
    default:
      return null;
  }
}

export function targetText(t: Target, unit = ''): string {
  const u = unit ? ` ${unit}` : '';
  switch (t.kind) {
    case 'ratio':
      return `≥ ${t.min}× baseline`;
    case 'min':
      return `≥ ${fmt(t.value)}${u}`;
    case 'max':
      return `< ${fmt(t.value)}${u}`;
    case 'atMost':
      return `≤ ${fmt(t.value)}${u}`;
    default:
      return '—';
  }
}

export function fmt(v: number | null): string {
  if (v === null || !Number.isFinite(v)) return '—';
  if (Math.abs(v) >= 100) return Math.round(v).toString();
  if (Math.abs(v) >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

/** `p50 / p99` in ms, or empty. */
export function latencyText(l: Latency | undefined): string {
  return l ? `${fmtMs(l.p50)} / ${fmtMs(l.p99)}` : '';
}

function fmtMs(ms: number): string {
  if (!Number.isFinite(ms)) return '?';
  if (ms >= 100) return Math.round(ms).toString();
  if (ms >= 10) return ms.toFixed(1);
  return ms.toFixed(2);
}

function markdown(head: string[], body: string[][]): string {
  const cell = (s: string) => s.replaceAll('|', '\\|');
  const rows = body.map((b) => b.map(cell));
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((b) => (b[i] as string).length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i] as number)).join(' | ')} |`;
  return [line(head), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.map(line)].join('\n');
}

/** A Markdown table: benchmark | dsm | p50/p99 | baseline | p50/p99 | ratio | target | met | note. */
export function renderTable(rows: Row[]): string {
  const head = [
    'benchmark',
    'dsm',
    'p50 / p99 ms',
    'baseline',
    'baseline p50 / p99 ms',
    'ratio',
    'target',
    'met',
    'note',
  ];
  const body = rows.map((r) => {
    const q = ratioOf(r);
    const met = metOf(r);
    return [
      r.name,
      fmt(r.dsm),
      latencyText(r.dsmLatency),
      r.base === null ? '—' : `${fmt(r.base)} (${r.baseLabel})`,
      latencyText(r.baseLatency),
      q === null ? '—' : `${q.toFixed(2)}×`,
      targetText(r.target, r.unit),
      met === null ? (r.target.kind === 'none' ? '—' : 'n/a') : met ? 'yes' : 'NO',
      r.note ?? '',
    ];
  });
  return markdown(head, body);
}

/** A Markdown table of every server/client pair measured: work | server | client | rate | p50/p99 | CPU. */
export function renderReferences(refs: Reference[]): string {
  const head = ['work', 'server', 'client', 'rate', 'p50 / p99 ms', 'server CPU', 'note'];
  const body = refs.map((r) => [
    r.work,
    r.server,
    r.client,
    r.value === null ? '—' : `${fmt(r.value)} ${r.unit}`,
    latencyText(r.latency),
    r.cpu ?? '',
    r.note ?? '',
  ]);
  return markdown(head, body);
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

/** The p-th percentile (0..100, nearest rank) of `xs`; NaN when empty. */
export function percentile(xs: ArrayLike<number>, p: number): number {
  const s = Array.from(xs).sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const rank = Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1));
  return s[rank] as number;
}

export function latencyOf(ms: ArrayLike<number>): Latency | undefined {
  return ms.length ? { p50: percentile(ms, 50), p99: percentile(ms, 99) } : undefined;
}
