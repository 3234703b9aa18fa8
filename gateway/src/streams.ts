import type { DsmClient } from '@dsm/client';
import { DsmError, ErrorCode, messageOf } from '@dsm/common/errors';
import { concatBytes, type FileIds } from '@dsm/packets';
import { badRequest, GatewayErrorCode, tooLarge } from './problem.ts';

/** Lets a download stream give its storage connection back while the client is not reading. */
export interface ReleaseOnStall {
  /** The rest of the download from `delivered` bytes on (a new storage request). */
  reopen(delivered: number): Promise<AsyncIterable<Uint8Array>>;
  /** No pull for this long: the current storage stream is closed (its connection freed). */
  afterMs: number;
}

/**
 * A download's chunks, taken one at a time by the side that writes them to the client. With
 * `stall`, a reader that takes no chunk for `stall.afterMs` after the last one no longer holds a
 * storage connection: the storage stream is closed, and reopened (from the next byte) at the
 * next read, so slow or stalled readers cannot take the upstream pool from everyone else.
 */
export class ReleasingSource {
  #it: AsyncIterator<Uint8Array> | null;
  /** The current storage stream was read from (one never started must be, to be closed). */
  #started = false;
  #reading = false;
  #delivered = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  readonly #stall: ReleaseOnStall | undefined;

  constructor(source: AsyncIterable<Uint8Array>, stall?: ReleaseOnStall) {
    this.#it = source[Symbol.asyncIterator]();
    this.#stall = stall;
  }

  /** Bytes handed out so far. */
  get delivered(): number {
    return this.#delivered;
  }

  /** The next chunk, or null at the end. */
  async next(): Promise<Uint8Array | null> {
    this.#reading = true;
    if (this.#timer) clearTimeout(this.#timer);
    try {
      let it = this.#it;
      if (!it) {
        it = (await (this.#stall as ReleaseOnStall).reopen(this.#delivered))[Symbol.asyncIterator]();
        this.#it = it;
        this.#started = false;
      }
      this.#started = true;
      const r = await it.next();
      if (r.done) return null;
      this.#delivered += r.value.length;
      this.#armStall();
      return r.value;
    } finally {
      this.#reading = false;
    }
  }

  /**
   * Closes the current storage stream (a generator that never ran must be started first, or its
   * finally blocks never run and the download's connection stays checked out).
   */
  async close(): Promise<void> {
    if (this.#timer) clearTimeout(this.#timer);
    const cur = this.#it;
    this.#it = null;
    if (!cur) return;
    if (!this.#started) await cur.next().catch(() => {});
    await cur.return?.(undefined).catch(() => {});
  }

  #armStall(): void {
    const stall = this.#stall;
    if (!stall) return;
    this.#timer = setTimeout(() => {
      if (!this.#reading && this.#it) void this.close();
    }, stall.afterMs);
    (this.#timer as { unref?: () => void }).unref?.();
  }
}

/**
 * An async iterable → a pull-based ReadableStream: the next chunk is asked from the source only
 * when the HTTP side wants one (backpressure), and a cancelled response (client gone) closes
 * the source, which drops the storage connection instead of reading the rest. With `stall`, a
 * client that stops reading gives its storage connection back (ReleasingSource).
 */
export function toReadableStream(
  source: AsyncIterable<Uint8Array>,
  onChunk?: (n: number) => void,
  /** Called once: at the end, on a source error, or with `cancelled` when the client went away. */
  onEnd?: (error: unknown, cancelled: boolean) => void,
  stall?: ReleaseOnStall,
): ReadableStream<Uint8Array> {
  const src = new ReleasingSource(source, stall);
  let finished = false;
  const finish = (e?: unknown, cancelled = false) => {
    if (finished) return;
    finished = true;
    onEnd?.(e, cancelled);
  };
  return new ReadableStream<Uint8Array>(
    {
      async pull(ctrl) {
        try {
          const chunk = await src.next();
          if (chunk === null) {
            finish();
            ctrl.close();
          } else {
            onChunk?.(chunk.length);
            ctrl.enqueue(chunk);
          }
        } catch (e) {
          finish(e);
          ctrl.error(e);
        }
      },
      async cancel(reason) {
        finish(reason, true);
        await src.close();
      },
    },
    { highWaterMark: 0 },
  );
}

/** The rest of a download, `length` bytes from `offset`, on a new storage request. */
export async function resumeDownload(
  client: DsmClient,
  ids: FileIds,
  offset: number,
  length: number,
): Promise<AsyncIterable<Uint8Array>> {
  const reply = await client.download(ids, offset, length);
  if (reply.length !== length) {
    const it = reply.stream[Symbol.asyncIterator]();
    await it.next().catch(() => {});
    await it.return?.();
    throw new DsmError(ErrorCode.PROTOCOL, `the storage offered ${reply.length} bytes, expected ${length}`);
  }
  return reply.stream;
}

/**
 * A request body as an async iterable. Errors of the underlying stream (client gone, body cut
 * off) surface as BODY_INCOMPLETE; stopping early cancels the body.
 */
export async function* bodyChunks(body: ReadableStream<Uint8Array> | null): AsyncGenerator<Uint8Array> {
  if (!body) return;
  const reader = body.getReader();
  let done = false;
  try {
    for (;;) {
      let r: ReadableStreamReadResult<Uint8Array>;
      try {
        r = await reader.read();
      } catch (e) {
        throw new DsmError(GatewayErrorCode.BODY_INCOMPLETE, `request body ended early: ${messageOf(e)}`);
      }
      if (r.done) {
        done = true;
        return;
      }
      if (r.value.length > 0) yield r.value;
    }
  } finally {
    if (!done) await reader.cancel().catch(() => {});
    else reader.releaseLock();
  }
}

/**
 * What the Node entry passes as `c.env.incoming` (node:http's IncomingMessage), as far as its
 * body goes: typed here without a `node:` import, since this file also runs in the Worker.
 */
interface NodeIncoming extends AsyncIterable<Uint8Array> {
  readonly complete: boolean;
  readonly readableDidRead: boolean;
  readonly readableFlowing: boolean | null;
  pipe: unknown;
}

function nodeIncoming(env: unknown): NodeIncoming | undefined {
  const i = (env as { incoming?: Partial<NodeIncoming> } | undefined)?.incoming;
  if (!i || typeof i.pipe !== 'function' || typeof i[Symbol.asyncIterator] !== 'function') return undefined;
  // already read (or flowing into something else): only the web stream knows the rest
  if (i.readableDidRead || i.readableFlowing) return undefined;
  return i as NodeIncoming;
}

/**
 * A request's body as chunks. In the Node entry it is read straight from the IncomingMessage
 * (`c.env.incoming`): the web ReadableStream around it (Readable.toWeb) cost 14.5% of the
 * gateway's CPU in a 1 GiB POST. Elsewhere (the Worker) it is the Request's web stream. Either
 * way a body that ends early (client gone, `timeouts.bodyIdleMs` cut the socket) throws
 * BODY_INCOMPLETE, and a consumer that stops early destroys the body (as a cancelled web
 * stream does).
 */
export function requestBody(
  env: unknown,
  web: () => ReadableStream<Uint8Array> | null,
): AsyncGenerator<Uint8Array> {
  const incoming = nodeIncoming(env);
  return incoming ? nodeBodyChunks(incoming) : bodyChunks(web());
}

async function* nodeBodyChunks(req: NodeIncoming): AsyncGenerator<Uint8Array> {
  const it = req[Symbol.asyncIterator]();
  let done = false;
  try {
    for (;;) {
      let r: IteratorResult<Uint8Array>;
      try {
        r = await it.next();
      } catch (e) {
        throw new DsmError(GatewayErrorCode.BODY_INCOMPLETE, `request body ended early: ${messageOf(e)}`);
      }
      if (r.done) {
        done = true;
        break;
      }
      if (r.value.length > 0) yield r.value;
    }
  } finally {
    // an early stop (a limit, a failed upload) destroys the body, as reader.cancel() would
    if (!done) await it.return?.();
  }
  if (!req.complete) {
    throw new DsmError(GatewayErrorCode.BODY_INCOMPLETE, 'request body ended early: the connection closed');
  }
}

/** Passes chunks through while counting; throws TOO_LARGE past `max` bytes. */
export async function* limited(
  source: AsyncIterable<Uint8Array>,
  max: number,
  onChunk?: (n: number, total: number) => void,
): AsyncGenerator<Uint8Array> {
  let total = 0;
  for await (const c of source) {
    total += c.length;
    if (total > max) throw tooLarge(`body exceeds the limit of ${max} bytes`);
    onChunk?.(c.length, total);
    yield c;
  }
}

/**
 * Requires exactly `length` bytes: the storage protocol declares a length up front, so a short
 * body must fail (and the storage then drops what it got) rather than pass as a small file.
 */
export function exactLength(source: AsyncIterable<Uint8Array>, length: number): AsyncIterable<Uint8Array> {
  // a body exact by its own reading (the hot lane's LaneBody): no second count
  if (isSelfCounted(source) && source.exactLength === length) return source;
  return exactly(source, length);
}

/** The mark of a SelfCountedBody. */
export const SELF_COUNTED: unique symbol = Symbol('dsm.selfCountedBody');

/**
 * A request body that counts what it handed out (`received`) and yields exactly `exactLength`
 * bytes or throws (the hot lane's LaneBody): `exactLength` and files.ts `countedBody` pass it
 * through instead of wrapping it in a second count.
 */
export interface SelfCountedBody extends AsyncIterable<Uint8Array> {
  readonly [SELF_COUNTED]: true;
  readonly received: number;
  readonly exactLength: number;
}

export function isSelfCounted(src: AsyncIterable<Uint8Array>): src is SelfCountedBody {
  return (src as Partial<SelfCountedBody>)[SELF_COUNTED] === true;
}

async function* exactly(source: AsyncIterable<Uint8Array>, length: number): AsyncGenerator<Uint8Array> {
  let total = 0;
  for await (const c of source) {
    total += c.length;
    if (total > length) throw badRequest(`body is longer than its declared ${length} bytes`);
    yield c;
  }
  if (total !== length) {
    throw new DsmError(GatewayErrorCode.BODY_INCOMPLETE, `request body ended at ${total} of ${length} bytes`);
  }
}

/**
 * Cuts a stream of chunks into blocks of `blockSize` bytes (the last may be shorter). Each
 * block is one Uint8Array; at most one block is held at a time. `ended` tells whether the
 * source finished while this block was filled (so no further block follows).
 */
export class BlockReader {
  readonly #it: AsyncIterator<Uint8Array>;
  readonly #size: number;
  #carry: Uint8Array | null = null;
  #ended = false;

  constructor(source: AsyncIterable<Uint8Array>, blockSize: number) {
    this.#it = source[Symbol.asyncIterator]();
    this.#size = blockSize;
  }

  get ended(): boolean {
    return this.#ended && this.#carry === null;
  }

  /** The next block, or null at the end. */
  async next(): Promise<Uint8Array | null> {
    const parts: Uint8Array[] = [];
    let n = 0;
    if (this.#carry) {
      const c = this.#carry;
      this.#carry = null;
      if (c.length > this.#size) {
        this.#carry = c.subarray(this.#size);
        return c.subarray(0, this.#size);
      }
      parts.push(c);
      n = c.length;
    }
    while (n < this.#size && !this.#ended) {
      const r = await this.#it.next();
      if (r.done) {
        this.#ended = true;
        break;
      }
      const want = this.#size - n;
      if (r.value.length > want) {
        parts.push(r.value.subarray(0, want));
        this.#carry = r.value.subarray(want);
        n += want;
      } else {
        parts.push(r.value);
        n += r.value.length;
      }
    }
    if (n === 0) return null;
    // One part is handed back as is (a block read from one chunk needs no copy).
    return parts.length === 1 ? (parts[0] as Uint8Array) : concatBytes(parts);
  }

  async close(): Promise<void> {
    await this.#it.return?.();
  }
}

/** Yields one buffer in slices (so a block goes to the socket in modest writes). */
export async function* slices(b: Uint8Array, size = 256 * 1024): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < b.length; i += size) yield b.subarray(i, Math.min(b.length, i + size));
}
