import { LiteCounter, LiteHistogram, registered } from '@dsm/common/lite-metrics';
import { Command, Errno } from '@dsm/packets';
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';

/** What the protocol server reports; a node without metrics passes nothing. */
export interface ServerMetrics {
  connectionOpened(): void;
  connectionClosed(): void;
  /** A connection refused before any command ran (allowFrom, authentication, a bad frame). */
  refused(reason: RefusalReason): void;
  /** One request, after its reply (or failure): `errno` 0 = success. */
  request(command: number, errno: number, seconds: number): void;
  bytesIn(n: number): void;
  bytesOut(n: number): void;
}

export type RefusalReason = 'address' | 'auth_failed' | 'unauthenticated' | 'bad_frame';

const COMMAND_NAMES = new Map<number, string>(Object.entries(Command).map(([k, v]) => [v, k]));
const ERRNO_NAMES = new Map<number, string>(Object.entries(Errno).map(([k, v]) => [v, k]));

/** Label of a command: its name in @dsm/packets, or `other` (label values stay a bounded set). */
export function commandLabel(command: number): string {
  return COMMAND_NAMES.get(command) ?? 'other';
}

/** Label of a reply: `ok`, the errno's name, or `other`. */
export function statusLabel(errno: number): string {
  if (errno === 0) return 'ok';
  return ERRNO_NAMES.get(errno) ?? 'other';
}

/**
 * One node's Prometheus registry: the protocol server's request, byte and connection metrics
 * (`dsm_node_*`, labelled with the node's role), the process metrics, and whatever the node adds
 * (`counter` / `gauge`). Served by the admin listener (admin.ts).
 */
export class NodeMetrics implements ServerMetrics {
  readonly registry = new Registry();
  // per request and per chunk: plain numbers (lite-metrics.ts)
  readonly #requests: LiteCounter<'command' | 'status'>;
  readonly #duration: LiteHistogram<'command'>;
  readonly #bytesIn: { inc(n?: number): void };
  readonly #bytesOut: { inc(n?: number): void };
  readonly #connections: Gauge;
  readonly #connectionsTotal: { inc(n?: number): void };
  readonly #refused: Counter<'reason'>;

  constructor(role = 'node') {
    const registers = [this.registry];
    this.registry.setDefaultLabels({ role });
    collectDefaultMetrics({ register: this.registry, prefix: 'dsm_node_' });
    const add = <M extends LiteCounter<string> | LiteHistogram<string>>(m: M): M =>
      registered(this.registry, m);
    this.#requests = add(
      new LiteCounter(
        'dsm_node_requests_total',
        'Protocol requests by command and status (ok or the errno name of the error reply)',
        ['command', 'status'],
      ),
    );
    this.#duration = add(
      new LiteHistogram(
        'dsm_node_request_duration_seconds',
        'Time from a request frame to the end of its reply, by command',
        ['command'],
        [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10],
      ),
    );
    this.#bytesIn = add(
      new LiteCounter('dsm_node_bytes_in_total', 'Protocol bytes received (frame headers and bodies)'),
    ).child();
    this.#bytesOut = add(
      new LiteCounter('dsm_node_bytes_out_total', 'Protocol bytes sent (reply headers and bodies)'),
    ).child();
    this.#connections = new Gauge({
      name: 'dsm_node_connections',
      help: 'Open protocol connections',
      registers,
    });
    this.#connectionsTotal = add(
      new LiteCounter('dsm_node_connections_total', 'Protocol connections accepted'),
    ).child();
    this.#refused = new Counter({
      name: 'dsm_node_refused_total',
      help: 'Connections closed before a command ran: address not allowed, authentication failed, a command that needs authentication, a malformed frame',
      labelNames: ['reason'] as const,
      registers,
    });
  }

  /** The `role` label every metric of this registry carries (tracker, storage, id). */
  setRole(role: string): void {
    this.registry.setDefaultLabels({ role });
  }

  connectionOpened(): void {
    this.#connections.inc();
    this.#connectionsTotal.inc();
  }

  connectionClosed(): void {
    this.#connections.dec();
  }

  refused(reason: RefusalReason): void {
    this.#refused.inc({ reason });
  }

  request(command: number, errno: number, seconds: number): void {
    const c = commandLabel(command);
    this.#requests.child({ command: c, status: statusLabel(errno) }).inc();
    this.#duration.child({ command: c }).observe(seconds);
  }

  bytesIn(n: number): void {
    this.#bytesIn.inc(n);
  }

  bytesOut(n: number): void {
    this.#bytesOut.inc(n);
  }

  /**
   * A counter of the node's own (`dsm_<role>_…`); with `read`, its value is what `read` says
   * when scraped (a count the node keeps anyway).
   */
  counter<L extends string = never>(
    name: string,
    help: string,
    labelNames: readonly L[] = [],
    read?: () => number,
  ): Counter<L> {
    return new Counter({
      name,
      help,
      labelNames,
      registers: [this.registry],
      ...(read
        ? {
            collect(this: Counter<L>) {
              this.reset();
              this.inc(read());
            },
          }
        : {}),
    });
  }

  /** A gauge of the node's own, set when scraped by `collect` (or by the node). */
  gauge<L extends string = never>(
    name: string,
    help: string,
    labelNames: readonly L[] = [],
    collect?: (g: Gauge<L>) => void | Promise<void>,
  ): Gauge<L> {
    return new Gauge({
      name,
      help,
      labelNames,
      registers: [this.registry],
      ...(collect
        ? {
            async collect(this: Gauge<L>) {
              await collect(this);
            },
          }
        : {}),
    });
  }

  /** A histogram of the node's own (seconds). */
  histogram<L extends string = never>(
    name: string,
    help: string,
    labelNames: readonly L[] = [],
    buckets = [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
  ): Histogram<L> {
    return new Histogram({ name, help, labelNames, buckets, registers: [this.registry] });
  }

  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
