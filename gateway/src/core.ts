import { type DsmClient, decodePublicId } from '@dsm/client';
import { LruMap } from '@dsm/common/lru';
import type { KvStore } from '@dsm/kv';
import type { FileIds, FileStat } from '@dsm/packets';
import { TokenVerifier } from './auth.ts';
import type { DownloadPolicy, GatewayConfig } from './config.ts';
import { EdgeLimits } from './edge-limits.ts';
import { badRequest } from './problem.ts';
import { Uploader } from './uploads.ts';

/** The subset of a pino logger the gateway uses (pino fits; the Worker entry passes its own). */
export interface GatewayLog {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

/** Metrics sink; the Node entry uses prom-client (metrics.ts), the default records nothing. */
export interface GatewayMetrics {
  request(method: string, route: string, status: number, seconds: number): void;
  bytesOut(route: string, n: number): void;
  bytesIn(route: string, n: number): void;
  tusSwept?(n: number): void;
  /** The exposition text for GET /metrics. */
  render(): Promise<{ contentType: string; body: string }>;
}

/** Finished stat answers by public id (see GatewayCore.stat), at most `statCacheMax`. */
export type StatCache = LruMap<string, { at: number; stat: FileStat }>;

export interface GatewayDeps {
  client: DsmClient;
  kv: KvStore;
  config: GatewayConfig;
  log?: GatewayLog;
  metrics?: GatewayMetrics;
  /**
   * Share the stat cache between app instances (the Worker builds one app per request, since a
   * Worker request may not use another request's sockets). Default: one per instance.
   */
  statCache?: StatCache;
  /** Share the token verifier (and its JWKS cache) the same way. Default: one per instance. */
  verifier?: TokenVerifier;
  /** Share the edge's concurrency counters the same way (the Worker: one per isolate). */
  edgeLimits?: EdgeLimits;
}

const noop = () => {};
export const silentLog: GatewayLog = { debug: noop, info: noop, warn: noop, error: noop };

/** Shared state and services of one gateway instance (independent of the HTTP framework). */
export class GatewayCore {
  readonly client: DsmClient;
  readonly kv: KvStore;
  readonly cfg: GatewayConfig;
  readonly log: GatewayLog;
  readonly metrics: GatewayMetrics | undefined;
  readonly verifier: TokenVerifier;
  readonly uploader: Uploader;
  readonly edgeLimits: EdgeLimits;
  readonly #stats: StatCache;
  readonly #inflight = new Map<string, Promise<FileStat>>();

  constructor(d: GatewayDeps) {
    this.client = d.client;
    this.kv = d.kv;
    this.cfg = d.config;
    this.log = d.log ?? silentLog;
    this.metrics = d.metrics;
    this.#stats = d.statCache ?? new LruMap(d.config.statCacheMax);
    this.verifier = d.verifier ?? new TokenVerifier(d.config.auth);
    this.edgeLimits = d.edgeLimits ?? new EdgeLimits(d.config.limits);
    this.uploader = new Uploader(d.client, d.config.uploadBlockBytes);
  }

  /**
   * A public id from a URL, as ids. A string that is not a well-formed id (bounded fields,
   * canonical base64url) is a 400 problem; a well-formed id of no file is the storage's 404.
   */
  parseId(publicId: string): FileIds {
    try {
      return decodePublicId(publicId);
    } catch {
      throw badRequest('not a dsm file id');
    }
  }

  /**
   * A file's stat, reused for `statCacheMs` (files never change, ids are never reused; only a
   * delete can make a cached stat stale, for at most that long). Concurrent requests for one
   * file (a CDN's range storm) share one storage round trip.
   */
  async stat(publicId: string, ids: FileIds): Promise<FileStat> {
    const ttl = this.cfg.statCacheMs;
    const hit = this.#stats.get(publicId);
    if (hit && Date.now() - hit.at < ttl) return hit.stat;
    let p = this.#inflight.get(publicId);
    if (!p) {
      p = this.client.stat(ids);
      this.#inflight.set(publicId, p);
      p.then(
        (stat) => {
          this.#inflight.delete(publicId);
          if (ttl > 0) this.#stats.set(publicId, { at: Date.now(), stat });
        },
        () => this.#inflight.delete(publicId),
      );
    }
    return p;
  }

  /** Files with a cached stat (bounded by `statCacheMax`). */
  get statCacheSize(): number {
    return this.#stats.size;
  }

  forget(publicId: string): void {
    this.#stats.delete(publicId);
  }

  policyFor(appId: string): DownloadPolicy {
    // own keys only: an app id like "constructor" must not find Object.prototype's
    const apps = this.cfg.downloads.apps;
    return (Object.hasOwn(apps, appId) ? apps[appId] : undefined) ?? this.cfg.downloads.default;
  }

  /** Base of URLs in replies: `publicUrl`, else the origin the request came to. */
  baseUrl(requestUrl: string): string {
    return (this.cfg.publicUrl ?? new URL(requestUrl).origin).replace(/\/+$/, '');
  }
}
