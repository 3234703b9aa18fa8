export type Target =
  | { kind: 'ratio'; min: number }
  | { kind: 'min'; value: number }
  | { kind: 'max'; value: number }
  | { kind: 'none' };

export interface Row {
  name: string;
  /** Measured value for dsm (null = not measured). */
  dsm: number | null;
  /** The comparison value (nginx or an in-process baseline). */
  base: number | null;
  /** What `base` is: `nginx`, `fs+fsync`, … */
  baseLabel: string;
  target: Target;
  /** Unit of the values (MiB/s, ops/s, MiB), shown with the target. */
  unit: string;
  /** Per-repetition values, for the details. */
  dsmRuns?: number[];
  baseRuns?: number[];
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

/** A Markdown table: benchmark | dsm | baseline | ratio | target | met. */
export function renderTable(rows: Row[]): string {
  const head = ['benchmark', 'dsm', 'nginx / baseline', 'ratio', 'target', 'met'];
  const body = rows.map((r) => {
    const q = ratioOf(r);
    const met = metOf(r);
    return [
      r.name,
      fmt(r.dsm),
      r.base === null ? '—' : `${fmt(r.base)} (${r.baseLabel})`,
      q === null ? '—' : `${q.toFixed(2)}×`,
      targetText(r.target, r.unit),
      met === null ? '—' : met ? 'yes' : 'NO',
    ];
  });
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => (b[i] as string).length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i] as number)).join(' | ')} |`;
  return [line(head), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...body.map(line)].join('\n');
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}
