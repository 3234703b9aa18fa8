import { Counter, collectDefaultMetrics, Histogram, Registry } from 'prom-client';
import type { GatewayMetrics } from './core.ts';

/** Prometheus metrics (Node entry). One registry per gateway instance, so tests can run several. */
export function createPromMetrics(
  opts: { defaultMetrics?: boolean } = {},
): GatewayMetrics & { registry: Registry } {
  const registry = new Registry();
  if (opts.defaultMetrics ?? true) collectDefaultMetrics({ register: registry, prefix: 'dsm_gateway_' });
  const requests = new Counter({
    name: 'dsm_gateway_requests_total',
    help: 'HTTP requests by method, route and status',
    labelNames: ['method', 'route', 'status'] as const,
    registers: [registry],
  });
  const duration = new Histogram({
    name: 'dsm_gateway_request_duration_seconds',
    help: 'Time to the response headers, by method and route',
    labelNames: ['method', 'route'] as const,
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [registry],
  });
  const bytesOut = new Counter({
    name: 'dsm_gateway_bytes_out_total',
    help: 'File bytes sent to clients, by route',
    labelNames: ['route'] as const,
    registers: [registry],
  });
  const bytesIn = new Counter({
    name: 'dsm_gateway_bytes_in_total',
    help: 'Upload bytes received from clients, by route',
    labelNames: ['route'] as const,
    registers: [registry],
  });
  const cacheLookups = new Counter({
    name: 'dsm_gateway_cache_lookups_total',
    help: 'Downloads that looked their file up in the stat or small-file cache, by cache and result',
    labelNames: ['cache', 'result'] as const,
    registers: [registry],
  });
  const sliceReads = new Counter({
    name: 'dsm_gateway_slice_reads_total',
    help: 'Reads of slices (or of the part of a slice a request wants) of big files from the storage (range coalescing: one read serves every request waiting for it)',
    registers: [registry],
  });
  const sliceReadBytes = new Counter({
    name: 'dsm_gateway_slice_read_bytes_total',
    help: 'Bytes of those slice reads',
    registers: [registry],
  });
  const swept = new Counter({
    name: 'dsm_gateway_tus_expired_total',
    help: 'Expired tus uploads deleted by the sweeper',
    registers: [registry],
  });
  // prom-client hashes the labels on every call; the children per label set are kept instead
  // (bounded: methods, routes and statuses are few, and unknown ones share "other" children)
  const requestChildren = new Map<string, { inc(): void }>();
  const durationChildren = new Map<string, { observe(v: number): void }>();
  const bytesOutChildren = new Map<string, { inc(n: number): void }>();
  const hits = {
    stat: [cacheLookups.labels('stat', 'miss'), cacheLookups.labels('stat', 'hit')],
    file: [cacheLookups.labels('file', 'miss'), cacheLookups.labels('file', 'hit')],
  };
  return {
    registry,
    request(method, route, status, seconds) {
      const m = KNOWN_METHODS.has(method) ? method : 'other';
      const rk = `${m} ${route} ${status}`;
      let r = requestChildren.get(rk);
      if (!r) {
        r = requests.labels(m, route, String(status));
        if (requestChildren.size < MAX_CHILDREN) requestChildren.set(rk, r);
      }
      r.inc();
      const dk = `${m} ${route}`;
      let d = durationChildren.get(dk);
      if (!d) {
        d = duration.labels(m, route);
        if (durationChildren.size < MAX_CHILDREN) durationChildren.set(dk, d);
      }
      d.observe(seconds);
    },
    bytesOut(route, n) {
      let b = bytesOutChildren.get(route);
      if (!b) {
        b = bytesOut.labels(route);
        if (bytesOutChildren.size < MAX_CHILDREN) bytesOutChildren.set(route, b);
      }
      b.inc(n);
    },
    cacheLookup(cache, hit) {
      (hits[cache][hit ? 1 : 0] as { inc(): void }).inc();
    },
    sliceRead(bytes) {
      sliceReads.inc();
      sliceReadBytes.inc(bytes);
    },
    bytesIn(route, n) {
      bytesIn.inc({ route }, n);
    },
    tusSwept(n) {
      swept.inc(n);
    },
    async render() {
      return { contentType: registry.contentType, body: await registry.metrics() };
    },
  };
}

const KNOWN_METHODS = new Set(['GET', 'HEAD', 'POST', 'PATCH', 'DELETE', 'OPTIONS', 'PUT']);
/** Label sets remembered per metric (routes are the app's few patterns or "unmatched"). */
const MAX_CHILDREN = 1024;
