import { LiteCounter, LiteHistogram, registered } from '@dsm/common/lite-metrics';
import { collectDefaultMetrics, Registry } from 'prom-client';
import type { GatewayMetrics } from './core.ts';

/** Prometheus metrics (Node entry). One registry per gateway instance, so tests can run several. */
export function createPromMetrics(
  opts: { defaultMetrics?: boolean } = {},
): GatewayMetrics & { registry: Registry } {
  const registry = new Registry();
  if (opts.defaultMetrics ?? true) collectDefaultMetrics({ register: registry, prefix: 'dsm_gateway_' });
  // the hot-path metrics: plain numbers per label set (lite-metrics.ts), rendered by the registry
  const add = <M extends LiteCounter<string> | LiteHistogram<string>>(m: M): M => registered(registry, m);
  const requests = add(
    new LiteCounter('dsm_gateway_requests_total', 'HTTP requests by method, route and status', [
      'method',
      'route',
      'status',
    ]),
  );
  const duration = add(
    new LiteHistogram(
      'dsm_gateway_request_duration_seconds',
      'Time to the response headers, by method and route',
      ['method', 'route'],
      [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    ),
  );
  const bytesOut = add(
    new LiteCounter('dsm_gateway_bytes_out_total', 'File bytes sent to clients, by route', ['route']),
  );
  const bytesIn = add(
    new LiteCounter('dsm_gateway_bytes_in_total', 'Upload bytes received from clients, by route', ['route']),
  );
  const cacheLookups = add(
    new LiteCounter(
      'dsm_gateway_cache_lookups_total',
      'Downloads that looked their file up in the stat or small-file cache, by cache and result',
      ['cache', 'result'],
    ),
  );
  const sliceReads = add(
    new LiteCounter(
      'dsm_gateway_slice_reads_total',
      'Reads of slices (or of the part of a slice a request wants) of big files from the storage (range coalescing: one read serves every request waiting for it)',
    ),
  ).child();
  const sliceReadBytes = add(
    new LiteCounter('dsm_gateway_slice_read_bytes_total', 'Bytes of those slice reads'),
  ).child();
  const invalidations = add(
    new LiteCounter(
      'dsm_gateway_cache_invalidations_total',
      'Drops from the caches by deletes: a file (kind file), everything (all: the delete journal or a storage delete log could not say what was deleted), and failed reads of those (failed: nothing cached is served until one succeeds)',
      ['kind'],
    ),
  );
  const invalidationKinds = {
    file: invalidations.child({ kind: 'file' }),
    all: invalidations.child({ kind: 'all' }),
    failed: invalidations.child({ kind: 'failed' }),
  };
  const swept = add(
    new LiteCounter('dsm_gateway_tus_expired_total', 'Expired tus uploads deleted by the sweeper'),
  ).child();
  // each label set's child is made once and found again by its labels (lite-metrics.ts, which
  // also bounds the sets: methods, routes and statuses are few, unknown methods are "other")
  const hits = {
    stat: [
      cacheLookups.child({ cache: 'stat', result: 'miss' }),
      cacheLookups.child({ cache: 'stat', result: 'hit' }),
    ],
    file: [
      cacheLookups.child({ cache: 'file', result: 'miss' }),
      cacheLookups.child({ cache: 'file', result: 'hit' }),
    ],
  };
  // the children of a request's label sets, found again without building their keys (routes,
  // statuses and methods are few: the maps are as bounded as the label sets)
  type RequestCells = { count: { inc(): void }; time: { observe(v: number): void } };
  const requestCells = new Map<string, Map<number, Map<string, RequestCells>>>();
  const bytesOutCells = new Map<string, { inc(n: number): void }>();
  return {
    registry,
    request(method, route, status, seconds) {
      let byStatus = requestCells.get(route);
      if (!byStatus) {
        byStatus = new Map();
        requestCells.set(route, byStatus);
      }
      let byMethod = byStatus.get(status);
      if (!byMethod) {
        byMethod = new Map();
        byStatus.set(status, byMethod);
      }
      let cells = byMethod.get(method);
      if (!cells) {
        const m = KNOWN_METHODS.has(method) ? method : 'other';
        cells = {
          count: requests.child({ method: m, route, status: String(status) }),
          time: duration.child({ method: m, route }),
        };
        // an unknown method is counted as "other" and not kept under its own name
        if (m === method) byMethod.set(method, cells);
      }
      cells.count.inc();
      cells.time.observe(seconds);
    },
    bytesOut(route, n) {
      let cell = bytesOutCells.get(route);
      if (!cell) {
        cell = bytesOut.child({ route });
        bytesOutCells.set(route, cell);
      }
      cell.inc(n);
    },
    cacheLookup(cache, hit) {
      (hits[cache][hit ? 1 : 0] as { inc(): void }).inc();
    },
    sliceRead(bytes) {
      sliceReads.inc();
      sliceReadBytes.inc(bytes);
    },
    invalidation(kind) {
      invalidationKinds[kind].inc();
    },
    bytesIn(route, n) {
      bytesIn.child({ route }).inc(n);
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
