import type { GatewayConfig } from './config.ts';
import { GatewayErrorCode, HttpError } from './problem.ts';

/**
 * Concurrency caps of the HTTP edge (runtime-neutral: the Node entry and the Worker share it).
 * An upload holds a storage connection while its body streams; a download holds one while the
 * client reads (and gives it back when the client stalls, see toReadableStream). Both are
 * counted, so neither a flood of uploads nor one address's downloads can take the upstream
 * pool from everyone else; past a cap the answer is 429 at once, before any byte is taken.
 */
export class EdgeLimits {
  #uploads = 0;
  /** Downloads streaming per client address (entries removed at zero: bounded by live ones). */
  readonly #downloads = new Map<string, number>();
  readonly #limits: GatewayConfig['limits'];

  constructor(limits: GatewayConfig['limits']) {
    this.#limits = limits;
  }

  get uploads(): number {
    return this.#uploads;
  }

  downloadsOf(addr: string): number {
    return this.#downloads.get(addr) ?? 0;
  }

  /** Whether takeDownload would give this address a slot now. */
  mayDownload(addr: string): boolean {
    return (this.#downloads.get(addr) ?? 0) < this.#limits.downloadsPerClient;
  }

  /** A release function, or a 429 HttpError thrown. */
  takeUpload(): () => void {
    if (this.#uploads >= this.#limits.concurrentUploads) {
      throw tooMany(`the gateway is already receiving ${this.#limits.concurrentUploads} uploads`);
    }
    this.#uploads++;
    return once(() => {
      this.#uploads--;
    });
  }

  takeDownload(addr: string): () => void {
    const n = this.#downloads.get(addr) ?? 0;
    if (n >= this.#limits.downloadsPerClient) {
      throw tooMany(`this address already has ${this.#limits.downloadsPerClient} downloads streaming`);
    }
    this.#downloads.set(addr, n + 1);
    return once(() => {
      const left = (this.#downloads.get(addr) ?? 1) - 1;
      if (left <= 0) this.#downloads.delete(addr);
      else this.#downloads.set(addr, left);
    });
  }
}

/**
 * The key a client's per-address caps count under: an IPv4 address as is (also when IPv4-mapped,
 * `::ffff:a.b.c.d`), an IPv6 address by its /64 (one subscriber usually holds a whole /64, so
 * counting single addresses would give one client 2^64 shares).
 */
export function clientKey(address: string): string {
  const a = address.trim().toLowerCase();
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/.exec(a);
  if (mapped) return mapped[1] as string;
  if (!a.includes(':')) return a;
  const [head = '', tail] = a.split('%')[0]?.split('::') ?? [''];
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  const groups =
    tail === undefined
      ? left
      : [...left, ...Array(Math.max(0, 8 - left.length - right.length)).fill('0'), ...right];
  return `${groups
    .slice(0, 4)
    .map((g) => (g || '0').replace(/^0+(?=.)/, ''))
    .join(':')}::/64`;
}

const tooMany = (msg: string) =>
  new HttpError(429, GatewayErrorCode.TOO_MANY_REQUESTS, msg, { headers: { 'Retry-After': '1' } });

function once(fn: () => void): () => void {
  let done = false;
  return () => {
    if (done) return;
    done = true;
    fn();
  };
}

/**
 * The response with its body wrapped so `release` runs when the body ends, fails or is cancelled
 * (the client went away or was cut); at once when there is no body.
 */
export function releaseWhenSent(res: Response, release: () => void): Response {
  const src = res.body;
  if (!src) {
    release();
    return res;
  }
  const reader = src.getReader();
  const body = new ReadableStream<Uint8Array>(
    {
      async pull(ctrl) {
        try {
          const r = await reader.read();
          if (r.done) {
            release();
            ctrl.close();
          } else ctrl.enqueue(r.value);
        } catch (e) {
          release();
          ctrl.error(e);
        }
      },
      async cancel(reason) {
        release();
        await reader.cancel(reason).catch(() => {});
      },
    },
    { highWaterMark: 0 },
  );
  return new Response(body, { status: res.status, statusText: res.statusText, headers: res.headers });
}
