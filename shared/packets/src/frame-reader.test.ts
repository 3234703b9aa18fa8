/**
 * FrameReader: reassembly independent of how the bytes are chunked, bounded allocation for any
 * declared length, dead-after-error, and the `idle` flag.
 */
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { concatBytes, fromHex, toHex } from './bytes.ts';
import { Command, Errno, HEADER_LENGTH, SHA256_LENGTH, Status } from './constants.ts';
import { type FrameEvent, FrameReader } from './frame-reader.ts';
import {
  bufferedUpTo,
  exactly,
  type FrameSpec,
  ID_COMMANDS,
  REQUEST_SPECS,
  replySpec,
  requestSpecs,
  type SpecFn,
  STORAGE_COMMANDS,
  streamed,
  TRACKER_COMMANDS,
} from './frame-spec.ts';
import { encodeFrame, encodeHeader, encodeStreamHeader } from './header.ts';
import { encodeErrorReply } from './messages/error-reply.ts';
import { encodeI64Body, encodeIdRequest } from './messages/id.ts';
import { encodeIds, type FileIds } from './messages/ids.ts';
import {
  DELETES_MAX,
  DELETES_REPLY_MAX,
  decodeDeletesReply,
  decodeDeletesRequest,
  encodeDeletesReply,
  encodeDeletesRequest,
  encodeDownloadRequest,
  encodeStatReply,
  encodeUploadAppendPrefix,
  encodeUploadCreate,
  encodeUploadExtPrefix,
  encodeUploadOffsetReply,
  encodeUploadPrefix,
  STAT_REPLY_LENGTH,
  UPLOAD_APPEND_PREFIX,
  UPLOAD_EXT_PREFIX,
  UPLOAD_PREFIX,
} from './messages/storage.ts';
import {
  encodeAddrsReply,
  encodeAddrsRequest,
  encodeBeat,
  encodeBeatExt,
  encodeClusterStatus,
  encodeJoin,
  encodeJoinExt,
  encodeText,
} from './messages/tracker.ts';

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/** Events in a chunking-independent form: hex bodies, consecutive data merged. */
type Norm =
  | { type: 'frame'; command: number; status: number; bodyLength: number; body: string }
  | { type: 'head'; command: number; status: number; bodyLength: number; prefix: string; rest: number }
  | { type: 'data'; data: string }
  | { type: 'end' }
  | { type: 'error'; command: number | undefined; message: string; errno: number };

function normalize(events: readonly FrameEvent[]): Norm[] {
  const out: Norm[] = [];
  for (const e of events) {
    switch (e.type) {
      case 'frame':
        out.push({ type: 'frame', ...e.header, body: toHex(e.body) });
        break;
      case 'head':
        out.push({ type: 'head', ...e.header, prefix: toHex(e.prefix), rest: e.rest });
        break;
      case 'data': {
        expect(e.chunk.length, 'data events are never empty').toBeGreaterThan(0);
        const last = out.at(-1);
        if (last?.type === 'data') last.data += toHex(e.chunk);
        else out.push({ type: 'data', data: toHex(e.chunk) });
        break;
      }
      case 'end':
        out.push({ type: 'end' });
        break;
      case 'error':
        out.push({
          type: 'error',
          command: e.header?.command,
          message: e.error.message,
          errno: e.error.errno,
        });
        break;
    }
  }
  return out;
}

/** Feeds `bytes` cut at the given (sorted) points; returns all events and the reader. */
function feed(
  spec: SpecFn,
  bytes: Uint8Array,
  cuts: readonly number[] = [],
): { reader: FrameReader; events: FrameEvent[] } {
  const reader = new FrameReader(spec);
  const events: FrameEvent[] = [];
  let prev = 0;
  for (const c of [...cuts, bytes.length]) {
    events.push(...reader.push(bytes.subarray(prev, c)));
    prev = c;
  }
  return { reader, events };
}

function feedByteByByte(spec: SpecFn, bytes: Uint8Array): { reader: FrameReader; events: FrameEvent[] } {
  const cuts: number[] = [];
  for (let i = 1; i < bytes.length; i++) cuts.push(i);
  return feed(spec, bytes, cuts);
}

/** Asserts that whole / every 2-piece split / byte-by-byte all give the same events. */
function expectChunkingInvariant(spec: SpecFn, bytes: Uint8Array): Norm[] {
  const whole = feed(spec, bytes);
  const expected = normalize(whole.events);
  for (let at = 0; at <= bytes.length; at++) {
    const split = feed(spec, bytes, [at]);
    const got = normalize(split.events);
    if (JSON.stringify(got) !== JSON.stringify(expected)) expect(got, `split at ${at}`).toEqual(expected);
    expect(split.reader.idle).toBe(whole.reader.idle);
    expect(split.reader.dead).toBe(whole.reader.dead);
  }
  const bytewise = feedByteByByte(spec, bytes);
  expect(normalize(bytewise.events), 'byte by byte').toEqual(expected);
  expect(bytewise.reader.idle).toBe(whole.reader.idle);
  return expected;
}

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomBytes(n: number, seed: number): Uint8Array {
  const rnd = mulberry32(seed);
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.floor(rnd() * 256);
  return out;
}

const IDS: FileIds = { appId: 'tnvideo', userId: 'tnv001', fileId: '6b06d5be08e2940ca804b97b1f8643000155' };
const storageSpec = requestSpecs(STORAGE_COMMANDS);
const trackerSpec = requestSpecs(TRACKER_COMMANDS);
const idSpec = requestSpecs(ID_COMMANDS);

/** A header announcing `bodyLength` (any bigint, even beyond the safe range), nothing else. */
function rawHeader(bodyLength: bigint, command: number, status = 0): Uint8Array {
  const h = new Uint8Array(HEADER_LENGTH);
  const dv = new DataView(h.buffer);
  dv.setBigInt64(0, bodyLength);
  dv.setUint8(8, command);
  dv.setUint8(9, status);
  return h;
}

// ---------------------------------------------------------------------------------------------
// The captured seed frames
// ---------------------------------------------------------------------------------------------

interface Vector {
  name: string;
  direction: 'request' | 'reply';
  command: number;
  status: number;
  frame_hex: string;
  connection: number;
  server: 'tracker' | 'id' | 'storage';
}

const VECTORS_PATH = fileURLToPath(new URL('../fixtures/seed-vectors.json', import.meta.url));
const vectors: Vector[] = existsSync(VECTORS_PATH)
  ? (JSON.parse(readFileSync(VECTORS_PATH, 'utf8')) as Vector[])
  : [];

const SERVER_SPEC = { tracker: trackerSpec, id: idSpec, storage: storageSpec };
const REPLY_COMMAND = {
  tracker: Command.TRACKER_REPLY,
  id: Command.ID_REPLY,
  storage: Command.STORAGE_REPLY,
};

function vectorSpec(v: Vector): SpecFn {
  if (v.direction === 'request') return SERVER_SPEC[v.server];
  let req: Vector | undefined;
  for (let j = vectors.indexOf(v) - 1; j >= 0 && !req; j--) {
    const c = vectors[j] as Vector;
    if (c.connection === v.connection && c.direction === 'request') req = c;
  }
  const ok: FrameSpec =
    req?.command === Command.STORAGE_DOWNLOAD
      ? streamed()
      : req?.command === Command.ID_GET || req?.command === Command.STORAGE_SIZE
        ? exactly(8)
        : bufferedUpTo(4096);
  return replySpec(REPLY_COMMAND[v.server], ok);
}

describe('seed vector frames, chunked every way', () => {
  it('the vectors file is present', () => {
    if (!existsSync(VECTORS_PATH)) expect.fail(`seed vectors file not found at ${VECTORS_PATH}`);
    expect(vectors).toHaveLength(83);
  });

  for (const v of vectors) {
    it(`${v.name}: every 2-piece split and byte-by-byte give the same events`, () => {
      const frame = fromHex(v.frame_hex);
      const spec = vectorSpec(v);
      const events = expectChunkingInvariant(spec, frame);
      expect(events.length).toBeGreaterThan(0);
      const types = events.map((e) => e.type);
      if (types.includes('error')) {
        expect(types).toEqual(['error']);
        return;
      }
      if (types[0] === 'head') {
        expect(types.filter((t) => t === 'head')).toHaveLength(1);
        expect(types.filter((t) => t === 'end')).toHaveLength(1);
        expect(types.at(-1)).toBe('end');
        const head = events[0] as Extract<Norm, { type: 'head' }>;
        const data = events.filter((e) => e.type === 'data').map((e) => (e as { data: string }).data);
        expect(head.prefix + data.join('')).toBe(v.frame_hex.slice(2 * HEADER_LENGTH));
      } else {
        expect(events).toEqual([
          expect.objectContaining({ type: 'frame', body: v.frame_hex.slice(2 * HEADER_LENGTH) }),
        ]);
      }
    });
  }

  it('all frames of each server, concatenated in one chunk, give every frame in order', () => {
    for (const server of ['tracker', 'id', 'storage'] as const) {
      // Only requests the server accepts (a refused one kills the stream by design).
      const frames = vectors
        .filter((v) => v.direction === 'request' && v.server === server)
        .map((v) => fromHex(v.frame_hex))
        .filter((f) => {
          const r = new FrameReader(SERVER_SPEC[server]);
          return !r.push(f).some((e) => e.type === 'error');
        });
      expect(frames.length).toBeGreaterThan(1);
      const separately = frames.flatMap((f) => normalize(feed(SERVER_SPEC[server], f).events));
      const all = concatBytes(frames);
      const together = feed(SERVER_SPEC[server], all);
      expect(normalize(together.events)).toEqual(separately);
      expect(together.reader.idle).toBe(true);
      // …and at random cut points.
      const rnd = mulberry32(server.length);
      for (let round = 0; round < 20; round++) {
        const cuts = Array.from({ length: 1 + Math.floor(rnd() * 30) }, () =>
          Math.floor(rnd() * all.length),
        ).sort((a, b) => a - b);
        expect(normalize(feed(SERVER_SPEC[server], all, cuts).events)).toEqual(separately);
      }
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Frames made by our encoders
// ---------------------------------------------------------------------------------------------

const content = randomBytes(1500, 1);
const downloadData = randomBytes(2000, 2);

const OWN_FRAMES: readonly { name: string; spec: SpecFn; frame: Uint8Array; streamedContent?: Uint8Array }[] =
  [
    {
      name: 'upload (70) with content',
      spec: storageSpec,
      frame: concatBytes([
        encodeStreamHeader(Command.STORAGE_UPLOAD, UPLOAD_PREFIX + content.length),
        encodeUploadPrefix({ ...IDS, size: content.length }),
        content,
      ]),
      streamedContent: content,
    },
    {
      name: 'empty upload (70)',
      spec: storageSpec,
      frame: encodeFrame(Command.STORAGE_UPLOAD, encodeUploadPrefix({ ...IDS, size: 0 })),
      streamedContent: new Uint8Array(0),
    },
    {
      name: 'upload append (76) with content',
      spec: storageSpec,
      frame: concatBytes([
        encodeStreamHeader(Command.STORAGE_UPLOAD_APPEND, UPLOAD_APPEND_PREFIX + 700),
        encodeUploadAppendPrefix({ ...IDS, offset: 4096, length: 700 }),
        content.subarray(0, 700),
      ]),
      streamedContent: content.subarray(0, 700),
    },
    {
      name: 'upload ext (80) with content',
      spec: storageSpec,
      frame: concatBytes([
        encodeStreamHeader(Command.STORAGE_UPLOAD_EXT, UPLOAD_EXT_PREFIX + content.length),
        encodeUploadExtPrefix({ ...IDS, contentType: 'video/mp4', size: content.length }),
        content,
      ]),
      streamedContent: content,
    },
    {
      name: 'download reply (102) read as a stream',
      spec: replySpec(Command.STORAGE_REPLY, streamed()),
      frame: concatBytes([encodeStreamHeader(Command.STORAGE_REPLY, downloadData.length), downloadData]),
      streamedContent: downloadData,
    },
    {
      name: 'empty download reply (102)',
      spec: replySpec(Command.STORAGE_REPLY, streamed()),
      frame: encodeStreamHeader(Command.STORAGE_REPLY, 0),
      streamedContent: new Uint8Array(0),
    },
    {
      name: 'download request (72)',
      spec: storageSpec,
      frame: encodeFrame(Command.STORAGE_DOWNLOAD, encodeDownloadRequest({ ...IDS, offset: 1000, size: 63 })),
    },
    { name: 'size (71)', spec: storageSpec, frame: encodeFrame(Command.STORAGE_SIZE, encodeIds(IDS)) },
    { name: 'stat (74)', spec: storageSpec, frame: encodeFrame(Command.STORAGE_STAT, encodeIds(IDS)) },
    {
      name: 'deletes since (81)',
      spec: storageSpec,
      frame: encodeFrame(Command.STORAGE_DELETES, encodeDeletesRequest(2 ** 40 + 3)),
    },
    {
      name: 'deletes reply (102)',
      spec: replySpec(Command.STORAGE_REPLY, bufferedUpTo(DELETES_REPLY_MAX)),
      frame: encodeFrame(Command.STORAGE_REPLY, encodeDeletesReply({ latest: 9_000, deleted: [IDS, IDS] })),
    },
    {
      name: 'upload create (75)',
      spec: storageSpec,
      frame: encodeFrame(
        Command.STORAGE_UPLOAD_CREATE,
        encodeUploadCreate({ ...IDS, totalSize: -1, contentType: '' }),
      ),
    },
    {
      name: 'upload offset (77)',
      spec: storageSpec,
      frame: encodeFrame(Command.STORAGE_UPLOAD_OFFSET, encodeIds(IDS)),
    },
    {
      name: 'upload commit (78)',
      spec: storageSpec,
      frame: encodeFrame(Command.STORAGE_UPLOAD_COMMIT, encodeIds(IDS)),
    },
    {
      name: 'upload abort (79)',
      spec: storageSpec,
      frame: encodeFrame(Command.STORAGE_UPLOAD_ABORT, encodeIds(IDS)),
    },
    { name: 'ping (1)', spec: storageSpec, frame: encodeFrame(Command.PING) },
    {
      name: 'join (10)',
      spec: trackerSpec,
      frame: encodeFrame(
        Command.TRACKER_JOIN,
        encodeJoin({
          version: '1.0',
          group: 'group001',
          hostname: 'vm',
          port: 23000,
          startTime: 1,
          joinTime: 2,
        }),
      ),
    },
    {
      name: 'join ext (14)',
      spec: trackerSpec,
      frame: encodeFrame(
        Command.TRACKER_JOIN_EXT,
        encodeJoinExt({
          version: '1.0',
          group: 'g1',
          hostname: 'h',
          port: 1,
          startTime: 3,
          joinTime: 4,
          protocolVersion: 2,
          totalBytes: 2 ** 40,
          freeBytes: 2 ** 39,
          load: 7,
          secret: 's3cret',
        }),
      ),
    },
    {
      name: 'beat (11)',
      spec: trackerSpec,
      frame: encodeFrame(Command.TRACKER_BEAT, encodeBeat({ group: 'g', hostname: 'h' })),
    },
    {
      name: 'beat ext (15)',
      spec: trackerSpec,
      frame: encodeFrame(
        Command.TRACKER_BEAT_EXT,
        encodeBeatExt({
          group: 'g',
          hostname: 'h',
          port: 23000,
          totalBytes: 10,
          freeBytes: 5,
          load: 1,
          pendingHeals: -1,
          writable: true,
        }),
      ),
    },
    {
      name: 'addrs (12)',
      spec: trackerSpec,
      frame: encodeFrame(Command.TRACKER_ADDRS, encodeAddrsRequest(IDS)),
    },
    { name: 'groups (13)', spec: trackerSpec, frame: encodeFrame(Command.TRACKER_GROUPS) },
    { name: 'status (16)', spec: trackerSpec, frame: encodeFrame(Command.TRACKER_STATUS) },
    { name: 'id get (40)', spec: idSpec, frame: encodeFrame(Command.ID_GET, encodeIdRequest('../data')) },
    {
      name: 'addrs reply (100)',
      spec: replySpec(Command.TRACKER_REPLY, bufferedUpTo(1024)),
      frame: encodeFrame(
        Command.TRACKER_REPLY,
        encodeAddrsReply({
          group: 'group001',
          addrs: [
            { host: '::1', port: 23000 },
            { host: '10.0.0.2', port: 1 },
          ],
        }),
      ),
    },
    {
      name: 'groups reply (100)',
      spec: replySpec(Command.TRACKER_REPLY, bufferedUpTo(1 << 16)),
      frame: encodeFrame(Command.TRACKER_REPLY, encodeText('COUNT OF GROUPS: 0')),
    },
    {
      name: 'status reply (100)',
      spec: replySpec(Command.TRACKER_REPLY, bufferedUpTo(1 << 16)),
      frame: encodeFrame(Command.TRACKER_REPLY, encodeClusterStatus({ tracker: 't', now: 1, groups: [] })),
    },
    {
      name: 'id reply (101)',
      spec: replySpec(Command.ID_REPLY, exactly(8)),
      frame: encodeFrame(Command.ID_REPLY, encodeI64Body(114700)),
    },
    {
      name: 'stat reply (102)',
      spec: replySpec(Command.STORAGE_REPLY, exactly(STAT_REPLY_LENGTH)),
      frame: encodeFrame(
        Command.STORAGE_REPLY,
        encodeStatReply({
          size: 1,
          mtimeMs: 2,
          sha256: new Uint8Array(SHA256_LENGTH).fill(7),
          contentType: 'a/b',
        }),
      ),
    },
    {
      name: 'upload offset reply (102)',
      spec: replySpec(Command.STORAGE_REPLY, exactly(16)),
      frame: encodeFrame(Command.STORAGE_REPLY, encodeUploadOffsetReply({ offset: 5, totalSize: -1 })),
    },
    {
      name: 'error reply (102) to a client expecting a stream',
      spec: replySpec(Command.STORAGE_REPLY, streamed()),
      frame: encodeFrame(
        Command.STORAGE_REPLY,
        encodeErrorReply({ errno: Errno.NOT_FOUND, message: '[h] Not Found' }),
        Status.ERROR,
      ),
    },
  ];

describe('frames made by our encoders, chunked every way', () => {
  for (const f of OWN_FRAMES) {
    it(f.name, () => {
      const events = expectChunkingInvariant(f.spec, f.frame);
      expect(events.some((e) => e.type === 'error')).toBe(false);
      const body = toHex(f.frame.subarray(HEADER_LENGTH));
      if (f.streamedContent) {
        const types = events.map((e) => e.type);
        expect(types[0]).toBe('head');
        expect(types.filter((t) => t === 'head')).toHaveLength(1);
        expect(types.filter((t) => t === 'end')).toHaveLength(1);
        expect(types.at(-1)).toBe('end');
        const head = events[0] as Extract<Norm, { type: 'head' }>;
        expect(head.rest).toBe(f.streamedContent.length);
        const data = events.filter((e) => e.type === 'data').map((e) => (e as { data: string }).data);
        expect(data.join('')).toBe(toHex(f.streamedContent));
        expect(head.prefix + data.join('')).toBe(body);
      } else {
        expect(events).toHaveLength(1);
        expect(events[0]).toMatchObject({ type: 'frame', body });
      }
    });
  }

  it('several frames in one chunk (streams between buffered frames) give all frames', () => {
    const storage = OWN_FRAMES.filter((f) => f.spec === storageSpec);
    expect(storage.length).toBeGreaterThan(10);
    const separately = storage.flatMap((f) => normalize(feed(storageSpec, f.frame).events));
    const all = concatBytes(storage.map((f) => f.frame));
    const together = feed(storageSpec, all);
    expect(normalize(together.events)).toEqual(separately);
    expect(together.events.filter((e) => e.type === 'frame' || e.type === 'head')).toHaveLength(
      storage.length,
    );
    expect(together.reader.idle).toBe(true);
    expect(normalize(feedByteByByte(storageSpec, all).events)).toEqual(separately);
    const rnd = mulberry32(42);
    for (let round = 0; round < 50; round++) {
      const cuts = Array.from({ length: Math.floor(rnd() * 40) }, () =>
        Math.floor(rnd() * (all.length + 1)),
      ).sort((a, b) => a - b);
      expect(normalize(feed(storageSpec, all, cuts).events)).toEqual(separately);
    }
  });

  it('streamed data events are views of the input, not copies; buffered bodies are copies', () => {
    const f = OWN_FRAMES[0] as (typeof OWN_FRAMES)[number];
    const input = f.frame.slice();
    const events = new FrameReader(storageSpec).push(input);
    for (const e of events) if (e.type === 'data') expect(e.chunk.buffer).toBe(input.buffer);
    const sizeFrame = encodeFrame(Command.STORAGE_SIZE, encodeIds(IDS));
    const [ev] = new FrameReader(storageSpec).push(sizeFrame);
    expect(ev?.type).toBe('frame');
    const before = ev?.type === 'frame' ? toHex(ev.body) : '';
    sizeFrame.fill(0xee);
    expect(ev?.type === 'frame' && toHex(ev.body)).toBe(before);
  });

  it('setSpec changes the rules for the next frame (a client sets the expected reply)', () => {
    const reader = new FrameReader(replySpec(Command.ID_REPLY, exactly(8)));
    expect(reader.push(encodeFrame(Command.ID_REPLY, encodeI64Body(1)))[0]?.type).toBe('frame');
    reader.setSpec(replySpec(Command.STORAGE_REPLY, streamed()));
    const events = reader.push(
      concatBytes([encodeStreamHeader(Command.STORAGE_REPLY, 3), new Uint8Array([1, 2, 3])]),
    );
    expect(events.map((e) => e.type)).toEqual(['head', 'data', 'end']);
  });
});

// ---------------------------------------------------------------------------------------------
// Declared lengths beyond the limits: refused from the header alone, nothing allocated
// ---------------------------------------------------------------------------------------------

describe('declared lengths beyond the limits', () => {
  const RealUint8Array = globalThis.Uint8Array;
  let allocations: number[] = [];

  /** Records the size of every `new Uint8Array(n)` while `fn` runs. */
  function spyAllocations<T>(fn: () => T): T {
    allocations = [];
    const spy: Uint8ArrayConstructor = new Proxy(RealUint8Array, {
      construct(target, args, newTarget): object {
        if (typeof args[0] === 'number') allocations.push(args[0]);
        return Reflect.construct(target, args, newTarget === spy ? target : newTarget);
      },
    });
    globalThis.Uint8Array = spy;
    try {
      return fn();
    } finally {
      globalThis.Uint8Array = RealUint8Array;
    }
  }

  afterEach(() => {
    globalThis.Uint8Array = RealUint8Array;
  });

  const CASES: readonly { name: string; spec: SpecFn; header: Uint8Array; message: string; errno: number }[] =
    [
      {
        name: 'id get with length 2^40',
        spec: idSpec,
        header: rawHeader(2n ** 40n, Command.ID_GET),
        message: 'Invalid Body Length: 1099511627776 > 65',
        errno: Errno.BAD_LENGTH,
      },
      {
        name: 'addrs with length 10^15',
        spec: trackerSpec,
        header: rawHeader(10n ** 15n, Command.TRACKER_ADDRS),
        message: 'Invalid Body Length: 1000000000000000 != 400',
        errno: Errno.BAD_LENGTH,
      },
      {
        name: 'size with length 2^63 − 1 (beyond the safe range)',
        spec: storageSpec,
        header: rawHeader(2n ** 63n - 1n, Command.STORAGE_SIZE),
        message: 'Invalid Body Length: Infinity != 400',
        errno: Errno.BAD_LENGTH,
      },
      {
        name: 'upload above maxUpload (1000)',
        spec: requestSpecs(STORAGE_COMMANDS, 1000),
        header: rawHeader(BigInt(UPLOAD_PREFIX + 1001), Command.STORAGE_UPLOAD),
        message: 'File Too Large: 1001 > 1000',
        errno: Errno.TOO_LARGE,
      },
      {
        name: 'upload ext with length 2^50 above maxUpload',
        spec: requestSpecs(STORAGE_COMMANDS, 2 ** 30),
        header: rawHeader(2n ** 50n, Command.STORAGE_UPLOAD_EXT),
        message: `File Too Large: ${2 ** 50 - UPLOAD_EXT_PREFIX} > ${2 ** 30}`,
        errno: Errno.TOO_LARGE,
      },
      {
        name: 'upload shorter than its prefix',
        spec: storageSpec,
        header: rawHeader(100n, Command.STORAGE_UPLOAD),
        message: `Invalid Body Length: 100 < ${UPLOAD_PREFIX}`,
        errno: Errno.BAD_LENGTH,
      },
      {
        name: 'error reply longer than 1026',
        spec: replySpec(Command.STORAGE_REPLY, streamed()),
        header: rawHeader(2n ** 40n, Command.STORAGE_REPLY, Status.ERROR),
        message: 'Invalid Body Length: 1099511627776 > 1026',
        errno: Errno.BAD_LENGTH,
      },
      {
        name: 'reply with a huge length but the wrong command',
        spec: replySpec(Command.STORAGE_REPLY, streamed()),
        header: rawHeader(2n ** 40n, Command.TRACKER_REPLY),
        message: 'Unexpected Reply Command: 100 != 102',
        errno: Errno.BAD_FIELD,
      },
    ];

  for (const c of CASES) {
    it(`${c.name}: error right after the 10 header bytes, no large allocation`, () => {
      const memBefore = process.memoryUsage().arrayBuffers;
      const reader = new FrameReader(c.spec);
      const events = spyAllocations(() => {
        const first = reader.push(c.header.subarray(0, 9));
        expect(first).toEqual([]);
        expect(reader.idle).toBe(false);
        return reader.push(c.header.subarray(9));
      });
      expect(Math.max(0, ...allocations)).toBeLessThanOrEqual(HEADER_LENGTH);
      expect(events).toHaveLength(1);
      const e = events[0] as Extract<FrameEvent, { type: 'error' }>;
      expect(e.type).toBe('error');
      expect(e.error.message).toBe(c.message);
      expect(e.error.errno).toBe(c.errno);
      expect(reader.dead).toBe(true);
      expect(reader.idle).toBe(false);
      // A would-be body is ignored.
      expect(reader.push(new Uint8Array(64 * 1024))).toEqual([]);
      expect(process.memoryUsage().arrayBuffers - memBefore).toBeLessThan(64 * 1024 * 1024);
    });
  }

  it('upload of exactly maxUpload is accepted', () => {
    const spec = requestSpecs(STORAGE_COMMANDS, 1000);
    const frame = concatBytes([
      encodeStreamHeader(Command.STORAGE_UPLOAD, UPLOAD_PREFIX + 1000),
      encodeUploadPrefix({ ...IDS, size: 1000 }),
      new Uint8Array(1000),
    ]);
    expect(feed(spec, frame).events.map((e) => e.type)).toEqual(['head', 'data', 'end']);
  });

  it('a 2^50-byte download reply streams without allocating its length', () => {
    const memBefore = process.memoryUsage().arrayBuffers;
    const reader = new FrameReader(replySpec(Command.STORAGE_REPLY, streamed()));
    const chunk = new RealUint8Array(1 << 20).fill(9);
    const events = spyAllocations(() => [
      ...reader.push(rawHeader(2n ** 50n, Command.STORAGE_REPLY)),
      ...reader.push(chunk),
      ...reader.push(chunk),
    ]);
    expect(Math.max(0, ...allocations)).toBeLessThanOrEqual(HEADER_LENGTH);
    expect(events.map((e) => e.type)).toEqual(['head', 'data', 'data']);
    expect(events[0]).toMatchObject({ type: 'head', rest: 2 ** 50 });
    expect(reader.idle).toBe(false);
    expect(reader.dead).toBe(false);
    expect(process.memoryUsage().arrayBuffers - memBefore).toBeLessThan(64 * 1024 * 1024);
  });

  it('buffered bodies allocate exactly their (bounded) length', () => {
    const frame = encodeFrame(Command.ID_GET, encodeIdRequest('k'.repeat(64)));
    const reader = new FrameReader(idSpec);
    const events = spyAllocations(() => reader.push(frame));
    expect(events.map((e) => e.type)).toEqual(['frame']);
    expect(Math.max(...allocations)).toBe(65);
  });
});

// ---------------------------------------------------------------------------------------------
// Dead after an error; idle only between frames
// ---------------------------------------------------------------------------------------------

describe('deletes since (81) bodies', () => {
  it('round-trip, and refuse a negative number, a count over DELETES_MAX or a body of another length', () => {
    expect(decodeDeletesRequest(encodeDeletesRequest(77))).toBe(77);
    const neg = new Uint8Array(8).fill(0xff);
    expect(() => decodeDeletesRequest(neg)).toThrow(/Invalid since/);
    expect(() => encodeDeletesRequest(-1)).toThrow(/Invalid since/);
    const two = encodeDeletesReply({ latest: 5, deleted: [IDS, { ...IDS, fileId: 'x' }] });
    expect(decodeDeletesReply(two)).toEqual({ latest: 5, deleted: [IDS, { ...IDS, fileId: 'x' }] });
    const most = encodeDeletesReply({
      latest: 2 ** 40,
      deleted: Array.from({ length: DELETES_MAX }, () => IDS),
    });
    expect(most.length).toBe(DELETES_REPLY_MAX);
    expect(decodeDeletesReply(most).deleted).toHaveLength(DELETES_MAX);
    expect(() => decodeDeletesReply(two.subarray(0, two.length - 1))).toThrow(/Invalid Body Length/);
    const many = new Uint8Array(10);
    many[8] = 0x01;
    many[9] = 0x01; // 257
    expect(() => decodeDeletesReply(many)).toThrow(/Too Many Deletes: 257 > 256/);
    expect(() =>
      encodeDeletesReply({ latest: 1, deleted: Array.from({ length: DELETES_MAX + 1 }, () => IDS) }),
    ).toThrow(/Too Many Deletes/);
  });
});

describe('reader state', () => {
  it('after an error the reader is dead and ignores all further input', () => {
    const reader = new FrameReader(trackerSpec);
    const good = encodeFrame(Command.TRACKER_GROUPS);
    const bad = encodeFrame(99);
    const events = reader.push(concatBytes([good, bad, good, good]));
    expect(events.map((e) => e.type)).toEqual(['frame', 'error']);
    expect(events[1]?.type === 'error' && events[1].error.message).toBe('Unknown Command: 99');
    expect(events[1]?.type === 'error' && events[1].error.errno).toBe(Errno.UNKNOWN_COMMAND);
    expect(reader.dead).toBe(true);
    expect(reader.idle).toBe(false);
    expect(reader.push(good)).toEqual([]);
    expect(reader.push(new Uint8Array(0))).toEqual([]);
    expect(reader.dead).toBe(true);
  });

  it('the error event carries the offending header', () => {
    const events = new FrameReader(storageSpec).push(rawHeader(10n, Command.STORAGE_SIZE));
    expect(events[0]).toMatchObject({ type: 'error', header: { bodyLength: 10, command: 71, status: 0 } });
  });

  it('a command of another server is unknown', () => {
    for (const [spec, cmd] of [
      [storageSpec, Command.TRACKER_JOIN],
      [trackerSpec, Command.ID_GET],
      [idSpec, Command.STORAGE_UPLOAD],
    ] as const) {
      const events = new FrameReader(spec).push(encodeFrame(cmd));
      expect(events[0]?.type === 'error' && events[0].error.message).toBe(`Unknown Command: ${cmd}`);
    }
  });

  it('every command of REQUEST_SPECS is accepted by exactly the right server', () => {
    for (const cmd of Object.keys(REQUEST_SPECS).map(Number)) {
      const servers = [STORAGE_COMMANDS, TRACKER_COMMANDS, ID_COMMANDS].filter((s) => s.includes(cmd));
      const everyNode = [
        Command.PING,
        Command.AUTH_CHALLENGE,
        Command.AUTH_PROVE,
        Command.REQUEST_CONTEXT,
      ] as number[];
      expect(servers.length, `command ${cmd}`).toBe(everyNode.includes(cmd) ? 3 : 1);
    }
  });

  it('idle is true only between frames', () => {
    const reader = new FrameReader(storageSpec);
    expect(reader.idle).toBe(true);
    const size = encodeFrame(Command.STORAGE_SIZE, encodeIds(IDS));
    reader.push(size.subarray(0, 1));
    expect(reader.idle).toBe(false); // partial header
    reader.push(size.subarray(1, HEADER_LENGTH));
    expect(reader.idle).toBe(false); // header read, body pending
    reader.push(size.subarray(HEADER_LENGTH, size.length - 1));
    expect(reader.idle).toBe(false);
    expect(reader.push(size.subarray(size.length - 1))).toHaveLength(1);
    expect(reader.idle).toBe(true);

    const upload = OWN_FRAMES[0]?.frame as Uint8Array;
    reader.push(upload.subarray(0, HEADER_LENGTH + 100));
    expect(reader.idle).toBe(false); // in the prefix
    reader.push(upload.subarray(HEADER_LENGTH + 100, HEADER_LENGTH + UPLOAD_PREFIX + 1));
    expect(reader.idle).toBe(false); // streaming
    const tail = reader.push(upload.subarray(HEADER_LENGTH + UPLOAD_PREFIX + 1));
    expect(tail.at(-1)?.type).toBe('end');
    expect(reader.idle).toBe(true);

    reader.push(encodeFrame(Command.PING));
    expect(reader.idle).toBe(true); // header-only frame
    reader.push(encodeHeader({ bodyLength: 0, command: Command.STORAGE_UPLOAD, status: 0 }));
    expect(reader.dead).toBe(true); // 0 < 408
    expect(reader.idle).toBe(false);
  });

  it('an empty chunk changes nothing', () => {
    const reader = new FrameReader(storageSpec);
    expect(reader.push(new Uint8Array(0))).toEqual([]);
    expect(reader.idle).toBe(true);
  });

  it('error replies must carry at least the errno', () => {
    const reader = new FrameReader(replySpec(Command.STORAGE_REPLY, exactly(0)));
    const events = reader.push(encodeFrame(Command.STORAGE_REPLY, new Uint8Array(1), Status.ERROR));
    expect(events[0]?.type === 'error' && events[0].error.message).toBe('Invalid Body Length: 1 < 2');
  });
});
