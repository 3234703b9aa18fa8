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
  const swept = new Counter({
    name: 'dsm_gateway_tus_expired_total',
    help: 'Expired tus uploads deleted by the sweeper',
    registers: [registry],
  });
  return {
    registry,
    request(method, route, status, seconds) {
      requests.inc({ method, route, status: String(status) });
      duration.observe({ method, route }, seconds);
    },
    bytesOut(route, n) {
      bytesOut.inc({ route }, n);
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
