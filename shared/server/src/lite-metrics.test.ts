import { LiteCounter, LiteHistogram } from '@dsm/common/lite-metrics';
import { AggregatorRegistry, Counter, Histogram, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';

// The lite metrics must render, reset and aggregate exactly as prom-client's own Counter and
// Histogram do for the same counts: prom-client is the oracle here.

const BUCKETS = [0.001, 0.01, 0.1, 1];
const OBSERVED = [0.0005, 0.001, 0.002, 0.05, 0.5, 3, 0.01, Number.NaN];

function prom(r: Registry) {
  const c = new Counter({
    name: 'x_requests_total',
    help: 'requests',
    labelNames: ['route', 'status'],
    registers: [r],
  });
  const plain = new Counter({ name: 'x_bytes_total', help: 'bytes', registers: [r] });
  const idle = new Counter({ name: 'x_idle_total', help: 'never counted', registers: [r] });
  const h = new Histogram({
    name: 'x_seconds',
    help: 'time',
    labelNames: ['route'],
    buckets: BUCKETS,
    registers: [r],
  });
  void idle;
  void new Histogram({ name: 'x_idle_seconds', help: 'never observed', buckets: BUCKETS, registers: [r] });
  return {
    count: (route: string, status: string, n: number) => c.inc({ route, status }, n),
    bytes: (n: number) => plain.inc(n),
    observe: (route: string, v: number) => {
      if (!Number.isNaN(v)) h.observe({ route }, v); // prom-client throws on NaN; the lite one ignores it
    },
  };
}

function lite(r: Registry) {
  const add = <M extends { name: string }>(m: M) => {
    r.registerMetric(m as never);
    return m;
  };
  const c = add(new LiteCounter('x_requests_total', 'requests', ['route', 'status']));
  const plain = add(new LiteCounter('x_bytes_total', 'bytes')).child();
  add(new LiteCounter('x_idle_total', 'never counted'));
  const h = add(new LiteHistogram('x_seconds', 'time', ['route'], BUCKETS));
  add(new LiteHistogram('x_idle_seconds', 'never observed', [], BUCKETS));
  return {
    count: (route: string, status: string, n: number) => c.child({ route, status }).inc(n),
    bytes: (n: number) => plain.inc(n),
    observe: (route: string, v: number) => h.child({ route }).observe(v),
  };
}

function feed(m: ReturnType<typeof prom>, k = 1) {
  m.count('/files', '200', 3 * k);
  m.count('/files', '404', 1);
  m.count('/tus', '201', 2);
  m.bytes(4096 * k);
  for (const v of OBSERVED) m.observe('/files', v * k);
  m.observe('/tus', 0.2);
}

describe('lite metrics', () => {
  it('render as prom-client renders the same counts (with default labels)', async () => {
    const a = new Registry();
    const b = new Registry();
    a.setDefaultLabels({ role: 'storage' });
    b.setDefaultLabels({ role: 'storage' });
    feed(prom(a));
    feed(lite(b));
    expect(await b.metrics()).toBe(await a.metrics());
    // prom-client adds `exemplar: null` to each bucket (exemplars are not used here)
    const json = async (r: Registry) =>
      JSON.parse(JSON.stringify(await r.getMetricsAsJSON(), (k, v) => (k === 'exemplar' ? undefined : v)));
    expect(await json(b)).toEqual(await json(a));
    a.resetMetrics();
    b.resetMetrics();
    expect(await b.metrics()).toBe(await a.metrics());
  });

  it('aggregate across workers as prom-client aggregates them', async () => {
    const sets = async (make: typeof prom) => {
      const out = [];
      for (const k of [1, 2]) {
        const r = new Registry();
        feed(make(r), k);
        out.push(await r.getMetricsAsJSON());
      }
      return AggregatorRegistry.aggregate(out).metrics();
    };
    expect(await sets(lite)).toBe(await sets(prom));
  });

  it('ignores what a counter must not count, and bounds its label sets', async () => {
    const c = new LiteCounter('y_total', 'y', ['k']);
    const one = c.child({ k: 'a' });
    one.inc(-1);
    one.inc(Number.NaN);
    one.inc(Number.POSITIVE_INFINITY);
    one.inc();
    for (let i = 0; i < 5000; i++) c.child({ k: `v${i}` }).inc();
    const values = c.get().values;
    expect(values.length).toBe(1025); // 1024 sets, then one "other" for the rest
    expect(values.find((v) => v.labels.k === 'a')?.value).toBe(1);
    expect(values.find((v) => v.labels.k === 'other')?.value).toBe(5000 - 1023);
  });
});
