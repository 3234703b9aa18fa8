/**
 * Counters and histograms for the hot paths, in the shape prom-client's `Registry` renders,
 * resets and aggregates across node:cluster workers (`get()`, `reset()`, `aggregator`): register
 * one with `registered(registry, m)`. A label set's child is a closure over plain
 * numbers, made once per set and found again by its label values (`child`); prom-client's own
 * children hash their labels on every `inc` and `observe`, which the profile gave 4-6 % of the
 * gateway's CPU per small request (and per storage request), and they made garbage.
 *
 * No prom-client import: the shape is all a registry asks of a metric.
 */

/**
 * Registers `m` with a prom-client registry (`registerMetric`; lite metrics have the shape it
 * asks, not its class) and returns it.
 */
export function registered<M extends LiteCounter<string> | LiteHistogram<string>>(
  registry: { registerMetric(metric: never): void },
  m: M,
): M {
  registry.registerMetric(m as never);
  return m;
}

/** One sample of a metric, as prom-client's `get()` gives it. */
export interface LiteSample {
  value: number;
  labels: Record<string, string | number>;
  /** Labels rendered after `labels` (a histogram's label set, after `le`). */
  sharedLabels?: Record<string, string>;
  metricName?: string;
}

export interface LiteMetricData {
  name: string;
  help: string;
  type: 'counter' | 'histogram';
  values: LiteSample[];
  aggregator: 'sum';
}

/** Most label sets a metric keeps; past it, new sets share one with every label `other`. */
const MAX_LABEL_SETS = 1024;

/** The key of a label set (label values never hold a NUL: they are known names or numbers). */
function keyOf(names: readonly string[], labels: Record<string, string>): string {
  let k = '';
  for (const n of names) k += `${labels[n] ?? ''}\u0000`;
  return k;
}

abstract class LiteMetric<L extends string, Cell extends { labels: Record<L, string> }> {
  readonly aggregator = 'sum' as const;
  protected readonly cells = new Map<string, Cell>();

  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly L[],
  ) {}

  protected cellFor(labels: Record<L, string>): Cell {
    let key = keyOf(this.labelNames, labels);
    let cell = this.cells.get(key);
    if (cell) return cell;
    if (this.cells.size >= MAX_LABEL_SETS) {
      const other = Object.fromEntries(this.labelNames.map((n) => [n, 'other'])) as Record<L, string>;
      key = keyOf(this.labelNames, other);
      cell = this.cells.get(key);
      if (cell) return cell;
      labels = other;
    }
    cell = this.newCell({ ...labels });
    this.cells.set(key, cell);
    return cell;
  }

  protected abstract newCell(labels: Record<L, string>): Cell;
  abstract get(): LiteMetricData;
  abstract reset(): void;
}

/** A monotonic counter (`# TYPE counter`); a metric without labels shows 0 before its first count. */
interface CounterCell<L extends string> {
  labels: Record<L, string>;
  value: number;
  /** Counted since the start or the last reset (a labelled series shows from its first count). */
  live: boolean;
  child: { inc(n?: number): void };
}

export class LiteCounter<L extends string = never> extends LiteMetric<L, CounterCell<L>> {
  readonly type = 'counter' as const;

  constructor(name: string, help: string, labelNames: readonly L[] = []) {
    super(name, help, labelNames);
    if (labelNames.length === 0) this.cellFor({} as Record<L, string>);
  }

  /** The counter of one label set (the same object each time); `inc` ignores negative or non-finite n. */
  child(labels: Record<L, string> = {} as Record<L, string>): { inc(n?: number): void } {
    return this.cellFor(labels).child;
  }

  protected newCell(labels: Record<L, string>): CounterCell<L> {
    // without labels, the one series shows from the start; with labels, from its first count
    const cell: CounterCell<L> = {
      labels,
      value: 0,
      live: this.labelNames.length === 0,
      child: {
        inc: (n = 1) => {
          if (!(n >= 0 && n !== Number.POSITIVE_INFINITY)) return;
          cell.value += n;
          cell.live = true;
        },
      },
    };
    return cell;
  }

  get(): LiteMetricData {
    const values: LiteSample[] = [];
    for (const c of this.cells.values()) if (c.live) values.push({ value: c.value, labels: { ...c.labels } });
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator };
  }

  /** Every series back to none (the one of a metric without labels to 0); children stay valid. */
  reset(): void {
    for (const c of this.cells.values()) {
      c.value = 0;
      c.live = this.labelNames.length === 0;
    }
  }
}

interface HistogramCell<L extends string> {
  labels: Record<L, string>;
  /** Observations per bucket (not cumulative); the last one is +Inf. */
  counts: Float64Array;
  sum: number;
  count: number;
  /** Observed since the start or the last reset (a series shows from its first observation). */
  live: boolean;
  child: { observe(v: number): void };
}

/** A histogram (`# TYPE histogram`: `_bucket` with `le`, `_sum`, `_count`), buckets as prom-client's. */
export class LiteHistogram<L extends string = never> extends LiteMetric<L, HistogramCell<L>> {
  readonly type = 'histogram' as const;
  readonly #buckets: readonly number[];

  constructor(name: string, help: string, labelNames: readonly L[], buckets: readonly number[]) {
    super(name, help, labelNames);
    this.#buckets = [...buckets].sort((a, b) => a - b);
    if (labelNames.length === 0) this.cellFor({} as Record<L, string>);
  }

  /** The histogram of one label set (the same object each time); `observe` ignores NaN and infinities. */
  child(labels: Record<L, string> = {} as Record<L, string>): { observe(v: number): void } {
    return this.cellFor(labels).child;
  }

  protected newCell(labels: Record<L, string>): HistogramCell<L> {
    const bounds = this.#buckets;
    const cell: HistogramCell<L> = {
      labels,
      counts: new Float64Array(bounds.length + 1),
      sum: 0,
      count: 0,
      live: this.labelNames.length === 0, // without labels, the one series shows from the start
      child: {
        observe: (v: number) => {
          if (!Number.isFinite(v)) return;
          let i = 0;
          while (i < bounds.length && v > (bounds[i] as number)) i++;
          cell.counts[i] = (cell.counts[i] as number) + 1;
          cell.sum += v;
          cell.count++;
          cell.live = true;
        },
      },
    };
    return cell;
  }

  /** The samples, each with its own labels (`le` first): getMetricsAsJSON, the workers' aggregation. */
  get(): LiteMetricData {
    return this.#data(false);
  }

  /** The samples as the registry renders a histogram's text: `le` apart from the set's labels. */
  getForPromString(): LiteMetricData {
    return this.#data(true);
  }

  #data(shared: boolean): LiteMetricData {
    const values: LiteSample[] = [];
    for (const c of this.cells.values()) {
      if (!c.live) continue;
      const sample = (value: number, own: Record<string, string | number>, metricName: string): LiteSample =>
        shared
          ? { value, labels: own, sharedLabels: c.labels, metricName }
          : { value, labels: { ...own, ...c.labels }, metricName };
      const bucket = `${this.name}_bucket`;
      let acc = 0;
      this.#buckets.forEach((le, i) => {
        acc += c.counts[i] as number;
        values.push(sample(acc, { le }, bucket));
      });
      values.push(sample(c.count, { le: '+Inf' }, bucket));
      values.push(sample(c.sum, {}, `${this.name}_sum`));
      values.push(sample(c.count, {}, `${this.name}_count`));
    }
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator };
  }

  reset(): void {
    for (const c of this.cells.values()) {
      c.counts.fill(0);
      c.sum = 0;
      c.count = 0;
      c.live = false; // as prom-client: no series until the next observation, labels or not
    }
  }
}
