/**
 * Property tests (fast-check): the reader never throws, every codec round-trips, decoders fail
 * only with ProtocolError, and chunking never changes what the reader produces.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { concatBytes, decodeCString, encodeCString, readFixed, toHex, writeFixed } from './bytes.ts';
import {
  APPID_WIDTH,
  CONTENT_TYPE_WIDTH,
  Command,
  ERROR_DESC_MAX,
  FILEID_WIDTH,
  GROUPNAME_WIDTH,
  HEADER_LENGTH,
  HOSTNAME_WIDTH,
  ID_KEY_MAX,
  IDS_LENGTH,
  SHA256_LENGTH,
  Status,
  TOKEN_WIDTH,
  USERID_WIDTH,
  VERSION_WIDTH,
} from './constants.ts';
import { ProtocolError } from './errors.ts';
import { type FrameEvent, FrameReader } from './frame-reader.ts';
import {
  bufferedUpTo,
  exactly,
  ID_COMMANDS,
  replySpec,
  requestSpecs,
  type SpecFn,
  STORAGE_COMMANDS,
  streamed,
  TRACKER_COMMANDS,
} from './frame-spec.ts';
import { decodeHeader, encodeFrame, encodeHeader, encodeStreamHeader } from './header.ts';
import { decodeErrorReply, encodeErrorReply } from './messages/error-reply.ts';
import { decodeI64Body, decodeIdRequest, encodeI64Body, encodeIdRequest } from './messages/id.ts';
import { encodeIds, type FileIds, readIds, readUserIdBytes } from './messages/ids.ts';
import {
  DOWNLOAD_LENGTH,
  decodeDownloadRequest,
  decodeIdsRequest,
  decodeStatReply,
  decodeUploadAppendPrefix,
  decodeUploadCreate,
  decodeUploadExtPrefix,
  decodeUploadOffsetReply,
  decodeUploadPrefix,
  encodeDownloadRequest,
  encodeStatReply,
  encodeUploadAppendPrefix,
  encodeUploadCreate,
  encodeUploadExtPrefix,
  encodeUploadOffsetReply,
  encodeUploadPrefix,
  STAT_REPLY_LENGTH,
  UPLOAD_APPEND_PREFIX,
  UPLOAD_CREATE_LENGTH,
  UPLOAD_EXT_PREFIX,
  UPLOAD_PREFIX,
} from './messages/storage.ts';
import {
  BEAT_EXT_LENGTH,
  BEAT_LENGTH,
  type ClusterStatus,
  decodeAddrsReply,
  decodeAddrsRequest,
  decodeBeat,
  decodeBeatExt,
  decodeClusterStatus,
  decodeJoin,
  decodeJoinExt,
  decodeText,
  encodeAddrsReply,
  encodeAddrsRequest,
  encodeBeat,
  encodeBeatExt,
  encodeClusterStatus,
  encodeJoin,
  encodeJoinExt,
  encodeText,
  JOIN_EXT_LENGTH,
  JOIN_LENGTH,
  parseAddress,
} from './messages/tracker.ts';

const RUNS = { numRuns: 300 };
const FEW_RUNS = { numRuns: 150 };

// ---------------------------------------------------------------------------------------------
// Arbitraries
// ---------------------------------------------------------------------------------------------

const utf8 = new TextEncoder();

/** Keeps whole code points while the UTF-8 length stays within `maxBytes`. */
function truncateUtf8(s: string, maxBytes: number): string {
  let out = '';
  let n = 0;
  for (const ch of s) {
    const len = utf8.encode(ch).length;
    if (n + len > maxBytes) break;
    out += ch;
    n += len;
  }
  return out;
}

/** Any string without NUL (ASCII, full Unicode incl. astral and U+FEFF) of ≤ maxBytes UTF-8 bytes. */
const text = (maxBytes: number, minBytes = 0): fc.Arbitrary<string> =>
  fc
    .oneof(
      fc.string({ unit: 'grapheme-ascii', maxLength: maxBytes }),
      fc.string({ unit: 'binary', maxLength: maxBytes }),
      fc.string({ unit: 'grapheme', maxLength: maxBytes }),
      // Characters that have tripped decoders: a leading BOM, multi-byte and astral code points.
      fc
        .tuple(
          fc.constantFrom('\uFEFF', 'é', '€', '😀', '%s', ' ', '\uFFFD'),
          fc.string({ maxLength: maxBytes }),
        )
        .map(([a, b]) => a + b),
    )
    .map((s) => truncateUtf8(s.replaceAll('\0', ''), maxBytes))
    .filter((s) => utf8.encode(s).length >= minBytes);

/** A value for a fixed field of `width` bytes (NUL included). */
const fixed = (width: number): fc.Arbitrary<string> => text(width - 1);

const i64 = fc.maxSafeInteger();
const nonNegI64 = fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER });
const port = fc.integer({ min: 1, max: 65535 });
const u16 = fc.integer({ min: 0, max: 65535 });
const u32 = fc.integer({ min: 0, max: 0xffffffff });
const i32 = fc.integer({ min: -0x80000000, max: 0x7fffffff });

const idsModel = {
  appId: fixed(APPID_WIDTH),
  userId: fixed(USERID_WIDTH),
  fileId: fixed(FILEID_WIDTH),
};
const ids: fc.Arbitrary<FileIds> = fc.record(idsModel);

const joinModel = {
  version: fixed(VERSION_WIDTH),
  group: fixed(GROUPNAME_WIDTH),
  hostname: fixed(HOSTNAME_WIDTH),
  port,
  startTime: i64,
  joinTime: i64,
};
const join = fc.record(joinModel);

const capacity = { totalBytes: i64, freeBytes: i64, load: u32 };

const host = fc.oneof(fc.ipV4(), fc.ipV6(), fc.domain(), fc.stringMatching(/^[a-z][a-z0-9-]{0,20}$/));

/** Bytes with many zeros, so fixed fields often hold a NUL (and decoders get past it). */
const bytesOf = (n: number): fc.Arbitrary<Uint8Array> =>
  fc
    .array(fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 255 })), { minLength: n, maxLength: n })
    .map((a) => Uint8Array.from(a));
const anyBytes = (maxLength: number): fc.Arbitrary<Uint8Array> =>
  fc.oneof(fc.uint8Array({ maxLength }), fc.integer({ min: 0, max: maxLength }).chain(bytesOf));

/** Cut points into `n` bytes (sorted, may repeat and include 0 / n). */
const cutsFor = (n: number): fc.Arbitrary<number[]> =>
  fc.array(fc.integer({ min: 0, max: n }), { maxLength: 12 }).map((a) => a.sort((x, y) => x - y));

function pushCut(reader: FrameReader, bytes: Uint8Array, cuts: readonly number[]): FrameEvent[] {
  const events: FrameEvent[] = [];
  let prev = 0;
  for (const c of [...cuts, bytes.length]) {
    events.push(...reader.push(bytes.subarray(prev, c)));
    prev = c;
  }
  return events;
}

/** Chunking-independent form of events (consecutive data merged, bodies in hex). */
function normalize(events: readonly FrameEvent[]): unknown[] {
  const out: unknown[] = [];
  for (const e of events) {
    if (e.type === 'data') {
      const last = out.at(-1) as { type: string; data: string } | undefined;
      if (last?.type === 'data') last.data += toHex(e.chunk);
      else out.push({ type: 'data', data: toHex(e.chunk) });
    } else if (e.type === 'frame') out.push({ ...e, body: toHex(e.body) });
    else if (e.type === 'head') out.push({ ...e, prefix: toHex(e.prefix) });
    else if (e.type === 'error') out.push({ type: 'error', header: e.header, message: e.error.message });
    else out.push(e);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// (a) The reader never throws
// ---------------------------------------------------------------------------------------------

const ALL_SPECS: readonly [string, SpecFn][] = [
  ['storage requests', requestSpecs(STORAGE_COMMANDS)],
  ['storage requests, maxUpload 100', requestSpecs(STORAGE_COMMANDS, 100)],
  ['tracker requests', requestSpecs(TRACKER_COMMANDS)],
  ['id requests', requestSpecs(ID_COMMANDS)],
  ['storage reply, streamed', replySpec(Command.STORAGE_REPLY, streamed())],
  ['tracker reply, buffered', replySpec(Command.TRACKER_REPLY, bufferedUpTo(300))],
  ['id reply, exactly 8', replySpec(Command.ID_REPLY, exactly(8))],
];

/** Random bytes that often look like plausible headers (small lengths, known commands). */
const plausibleStream: fc.Arbitrary<Uint8Array> = fc
  .array(
    fc.oneof(
      fc.uint8Array({ maxLength: 40 }),
      fc
        .record({
          len: fc.oneof(
            fc.integer({ min: 0, max: 600 }),
            fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }).map(Number),
          ),
          command: fc.constantFrom(
            1,
            10,
            11,
            12,
            13,
            14,
            15,
            16,
            40,
            70,
            71,
            72,
            73,
            74,
            75,
            76,
            77,
            78,
            79,
            80,
            100,
            101,
            102,
            99,
            0,
            255,
          ),
          status: fc.constantFrom(0, 0xfd, 1),
          body: fc.uint8Array({ maxLength: 600 }),
        })
        .map(({ len, command, status, body }) => {
          const h = new Uint8Array(HEADER_LENGTH);
          const dv = new DataView(h.buffer);
          dv.setBigInt64(0, BigInt.asIntN(64, BigInt(Number.isFinite(len) ? Math.trunc(len) : 0)));
          dv.setUint8(8, command);
          dv.setUint8(9, status);
          return concatBytes([h, body]);
        }),
    ),
    { maxLength: 6 },
  )
  .map(concatBytes);

describe('(a) FrameReader.push never throws', () => {
  for (const [name, spec] of ALL_SPECS) {
    it(`arbitrary bytes, chunked arbitrarily: ${name}`, () => {
      fc.assert(
        fc.property(
          fc
            .oneof(fc.uint8Array({ maxLength: 2000 }), plausibleStream)
            .chain((b) => fc.tuple(fc.constant(b), cutsFor(b.length))),
          ([bytes, cuts]) => {
            const reader = new FrameReader(spec);
            const events = pushCut(reader, bytes, cuts); // must not throw
            const errors = events.filter((e) => e.type === 'error');
            expect(errors.length).toBeLessThanOrEqual(1);
            if (errors.length === 1) {
              expect(events.at(-1)?.type).toBe('error');
              expect(reader.dead).toBe(true);
              expect((errors[0] as { error: unknown }).error).toBeInstanceOf(ProtocolError);
            }
            // head/data/end are well nested
            let inStream = false;
            for (const e of events) {
              if (e.type === 'head') {
                expect(inStream).toBe(false);
                inStream = true;
              } else if (e.type === 'data') expect(inStream).toBe(true);
              else if (e.type === 'end') {
                expect(inStream).toBe(true);
                inStream = false;
              } else if (e.type === 'frame') expect(inStream).toBe(false);
            }
            if (reader.idle) expect(inStream).toBe(false);
          },
        ),
        RUNS,
      );
    });
  }
});

// ---------------------------------------------------------------------------------------------
// (b) Round trips
// ---------------------------------------------------------------------------------------------

function roundTrip<T>(
  name: string,
  arb: fc.Arbitrary<T>,
  enc: (v: T) => Uint8Array,
  dec: (b: Uint8Array) => T,
  len?: (v: T) => number,
) {
  it(name, () => {
    fc.assert(
      fc.property(arb, (v) => {
        const b = enc(v);
        if (len) expect(b.length).toBe(len(v));
        expect(dec(b)).toEqual(v);
      }),
      RUNS,
    );
  });
}

describe('(b) encode → decode round trips', () => {
  roundTrip(
    'header',
    fc.record({
      bodyLength: nonNegI64,
      command: fc.integer({ min: 0, max: 255 }),
      status: fc.integer({ min: 0, max: 255 }),
    }),
    (h) => encodeHeader(h),
    (b) => decodeHeader(b),
    () => HEADER_LENGTH,
  );
  roundTrip(
    'fixed field (any width 1..300)',
    fc.integer({ min: 1, max: 300 }).chain((w) => fc.tuple(fc.constant(w), fixed(w))),
    ([w, s]) => {
      const b = new Uint8Array(w).fill(0xaa);
      writeFixed(b, 0, w, s, 'f');
      expect(b.subarray(utf8.encode(s).length).every((x) => x === 0)).toBe(true); // zero-padded
      return b;
    },
    (b) => [b.length, readFixed(b, 0, b.length, 'f')] as [number, string],
  );
  roundTrip('C string', text(500), encodeCString, decodeCString, (s) => utf8.encode(s).length + 1);
  it('a leading U+FEFF survives (TextDecoder would strip it by default)', () => {
    const v = { appId: '\uFEFFa', userId: '\uFEFF', fileId: '\uFEFF\uFEFF' };
    expect(readIds(encodeIds(v))).toEqual(v);
    expect(decodeText(encodeText('\uFEFFx'))).toBe('\uFEFFx');
  });
  roundTrip(
    'id block (400)',
    ids,
    encodeIds,
    (b) => readIds(b),
    () => IDS_LENGTH,
  );
  it('user id bytes equal the UTF-8 of the user id', () => {
    fc.assert(
      fc.property(ids, (v) => {
        expect(toHex(readUserIdBytes(encodeIds(v)))).toBe(toHex(utf8.encode(v.userId)));
      }),
      RUNS,
    );
  });
  roundTrip('join (10)', join, encodeJoin, decodeJoin, () => JOIN_LENGTH);
  roundTrip(
    'join ext (14)',
    fc.record({ ...joinModel, protocolVersion: u16, secret: fixed(TOKEN_WIDTH), ...capacity }),
    encodeJoinExt,
    decodeJoinExt,
    () => JOIN_EXT_LENGTH,
  );
  roundTrip(
    'beat (11)',
    fc.record({ group: fixed(GROUPNAME_WIDTH), hostname: fixed(HOSTNAME_WIDTH) }),
    encodeBeat,
    decodeBeat,
    () => BEAT_LENGTH,
  );
  roundTrip(
    'beat ext (15)',
    fc.record({
      group: fixed(GROUPNAME_WIDTH),
      hostname: fixed(HOSTNAME_WIDTH),
      port,
      pendingHeals: i32,
      writable: fc.boolean(),
      ...capacity,
    }),
    encodeBeatExt,
    decodeBeatExt,
    () => BEAT_EXT_LENGTH,
  );
  roundTrip('addrs request (12)', ids, encodeAddrsRequest, decodeAddrsRequest, () => IDS_LENGTH);
  roundTrip(
    'addrs reply (100)',
    fc.record({
      group: fixed(GROUPNAME_WIDTH),
      addrs: fc.array(fc.record({ host, port }), { maxLength: 3 }),
    }),
    encodeAddrsReply,
    decodeAddrsReply,
  );
  roundTrip('group list text (13 reply)', text(4000), encodeText, decodeText);
  roundTrip(
    'cluster status (16 reply)',
    fc.record({
      tracker: fc.string({ unit: 'binary' }),
      now: i64,
      groups: fc.array(
        fc.record({
          name: fc.string({ unit: 'binary' }),
          storages: fc.array(
            fc.record({
              group: fc.string(),
              hostname: fc.string({ unit: 'binary' }),
              host: fc.string(),
              port,
              version: fc.string(),
              protocolVersion: u16,
              state: fc.constantFrom('OFFLINE' as const, 'ONLINE' as const, 'ACTIVE' as const),
              startTime: i64,
              joinTime: i64,
              beatTime: i64,
              totalBytes: i64,
              freeBytes: i64,
              load: u32,
              pendingHeals: i32,
            }),
            { maxLength: 3 },
          ),
        }),
        { maxLength: 3 },
      ),
    }) as fc.Arbitrary<ClusterStatus>,
    encodeClusterStatus,
    decodeClusterStatus,
  );
  roundTrip(
    'id request (40)',
    text(ID_KEY_MAX, 1),
    encodeIdRequest,
    decodeIdRequest,
    (k) => utf8.encode(k).length + 1,
  );
  roundTrip(
    'i64 body (101, 71 replies)',
    i64,
    encodeI64Body,
    (b) => decodeI64Body(b),
    () => 8,
  );
  roundTrip(
    'error reply',
    fc.record({ errno: fc.integer({ min: -32768, max: 32767 }), message: text(ERROR_DESC_MAX - 1) }),
    encodeErrorReply,
    decodeErrorReply,
    (e) => 2 + (e.message.length > 0 ? utf8.encode(e.message).length + 1 : 0),
  );
  it('error reply: long messages are cut on a character boundary to ≤ 1023 bytes', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary', minLength: 200, maxLength: 2000 }), (m) => {
        const message = m.replaceAll('\0', '');
        const b = encodeErrorReply({ errno: -1, message });
        expect(b.length).toBeLessThanOrEqual(2 + ERROR_DESC_MAX);
        const back = decodeErrorReply(b).message;
        expect(message.startsWith(back)).toBe(true);
        expect(back).toBe(truncateUtf8(message, ERROR_DESC_MAX - 1));
      }),
      FEW_RUNS,
    );
  });
  roundTrip('ids request (71, 73, 74, 77, 78, 79)', ids, encodeIds, decodeIdsRequest, () => IDS_LENGTH);
  roundTrip(
    'upload prefix (70)',
    fc.record({ ...idsModel, size: fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER - UPLOAD_PREFIX }) }),
    encodeUploadPrefix,
    (b) => decodeUploadPrefix(b, UPLOAD_PREFIX + readSize(b, IDS_LENGTH)),
    () => UPLOAD_PREFIX,
  );
  roundTrip(
    'upload ext prefix (80)',
    fc.record({
      ...idsModel,
      contentType: fixed(CONTENT_TYPE_WIDTH),
      size: fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER - UPLOAD_EXT_PREFIX }),
    }),
    encodeUploadExtPrefix,
    (b) => decodeUploadExtPrefix(b, UPLOAD_EXT_PREFIX + readSize(b, IDS_LENGTH + CONTENT_TYPE_WIDTH)),
    () => UPLOAD_EXT_PREFIX,
  );
  roundTrip(
    'download request (72)',
    fc.record({ ...idsModel, offset: i64, size: i64 }),
    encodeDownloadRequest,
    decodeDownloadRequest,
    () => DOWNLOAD_LENGTH,
  );
  roundTrip(
    'stat reply (74, 78, 80)',
    fc.record({
      size: i64,
      mtimeMs: i64,
      sha256: fc.uint8Array({ minLength: SHA256_LENGTH, maxLength: SHA256_LENGTH }),
      contentType: fixed(CONTENT_TYPE_WIDTH),
    }),
    encodeStatReply,
    decodeStatReply,
    () => STAT_REPLY_LENGTH,
  );
  roundTrip(
    'upload create (75)',
    fc.record({
      ...idsModel,
      totalSize: fc.integer({ min: -1, max: Number.MAX_SAFE_INTEGER }),
      contentType: fixed(CONTENT_TYPE_WIDTH),
    }),
    encodeUploadCreate,
    decodeUploadCreate,
    () => UPLOAD_CREATE_LENGTH,
  );
  roundTrip(
    'upload append prefix (76)',
    fc.record({
      ...idsModel,
      offset: nonNegI64,
      length: fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER - UPLOAD_APPEND_PREFIX }),
    }),
    encodeUploadAppendPrefix,
    (b) => decodeUploadAppendPrefix(b, UPLOAD_APPEND_PREFIX + readSize(b, IDS_LENGTH + 8)),
    () => UPLOAD_APPEND_PREFIX,
  );
  roundTrip(
    'upload offset reply (77)',
    fc.record({ offset: i64, totalSize: i64 }),
    encodeUploadOffsetReply,
    decodeUploadOffsetReply,
    () => 16,
  );

  it('encoders refuse values the wire cannot carry (ProtocolError, never a silent wrap)', () => {
    const bad: (() => unknown)[] = [
      () => encodeJoin({ version: '1.0', group: 'g', hostname: 'h', port: 65536, startTime: 0, joinTime: 0 }),
      () => encodeJoin({ version: '1.0', group: 'g', hostname: 'h', port: -1, startTime: 0, joinTime: 0 }),
      () => encodeJoin({ version: '1.0.0.0', group: 'g', hostname: 'h', port: 1, startTime: 0, joinTime: 0 }),
      () =>
        encodeJoin({ version: '1.0', group: 'g', hostname: 'h', port: 1, startTime: 2 ** 53, joinTime: 0 }),
      () =>
        encodeBeatExt({
          group: 'g',
          hostname: 'h',
          port: 1,
          totalBytes: 0,
          freeBytes: 0,
          load: -1,
          pendingHeals: 0,
          writable: true,
        }),
      () =>
        encodeBeatExt({
          group: 'g',
          hostname: 'h',
          port: 1,
          totalBytes: 0,
          freeBytes: 0,
          load: 0,
          pendingHeals: 2 ** 31,
          writable: true,
        }),
      () => encodeErrorReply({ errno: 40000, message: 'x' }),
      () => encodeIds({ appId: 'a'.repeat(16), userId: '', fileId: '' }),
      () => encodeIds({ appId: 'a\0b', userId: '', fileId: '' }),
      () => encodeIdRequest(''),
      () => encodeIdRequest('k'.repeat(65)),
      () => encodeIdRequest('a\0b'),
      () => encodeText('a\0b'),
      () => encodeI64Body(1.5),
      () => encodeUploadPrefix({ appId: 'a', userId: 'u', fileId: 'f', size: -1 }),
      () => encodeUploadCreate({ appId: 'a', userId: 'u', fileId: 'f', totalSize: -2, contentType: '' }),
      () => encodeUploadAppendPrefix({ appId: 'a', userId: 'u', fileId: 'f', offset: -1, length: 0 }),
      () => encodeStatReply({ size: 0, mtimeMs: 0, sha256: new Uint8Array(31), contentType: '' }),
      () => encodeFrame(256),
      () => encodeFrame(Command.STORAGE_REPLY, new Uint8Array(0), -3),
      () => encodeStreamHeader(Command.STORAGE_REPLY, -1),
    ];
    for (const fn of bad) expect(fn).toThrow(ProtocolError);
  });
});

function readSize(b: Uint8Array, offset: number): number {
  return Number(new DataView(b.buffer, b.byteOffset).getBigInt64(offset));
}

// ---------------------------------------------------------------------------------------------
// (c) Decoders fail only with ProtocolError
// ---------------------------------------------------------------------------------------------

function valueOrProtocolError(fn: () => unknown): void {
  try {
    fn();
  } catch (e) {
    if (!(e instanceof ProtocolError)) throw new Error(`non-ProtocolError thrown: ${String(e)}`);
  }
}

const DECODERS: readonly [name: string, length: number | null, decode: (b: Uint8Array) => unknown][] = [
  ['decodeHeader', HEADER_LENGTH, (b) => decodeHeader(b)],
  ['decodeJoin', JOIN_LENGTH, decodeJoin],
  ['decodeJoinExt', JOIN_EXT_LENGTH, decodeJoinExt],
  ['decodeBeat', BEAT_LENGTH, decodeBeat],
  ['decodeBeatExt', BEAT_EXT_LENGTH, decodeBeatExt],
  ['decodeBeatExt (first version)', BEAT_EXT_LENGTH - 1, decodeBeatExt],
  ['decodeAddrsRequest', IDS_LENGTH, decodeAddrsRequest],
  ['decodeAddrsReply', null, decodeAddrsReply],
  ['decodeText', null, decodeText],
  ['decodeClusterStatus', null, decodeClusterStatus],
  ['decodeIdRequest', null, decodeIdRequest],
  ['decodeI64Body', 8, (b) => decodeI64Body(b)],
  ['decodeErrorReply', null, decodeErrorReply],
  ['readIds', IDS_LENGTH, (b) => readIds(b)],
  ['readUserIdBytes', IDS_LENGTH, (b) => readUserIdBytes(b)],
  ['decodeIdsRequest', IDS_LENGTH, decodeIdsRequest],
  ['decodeUploadPrefix', UPLOAD_PREFIX, (b) => decodeUploadPrefix(b, UPLOAD_PREFIX + (b[0] ?? 0))],
  [
    'decodeUploadExtPrefix',
    UPLOAD_EXT_PREFIX,
    (b) => decodeUploadExtPrefix(b, UPLOAD_EXT_PREFIX + (b[0] ?? 0)),
  ],
  ['decodeDownloadRequest', DOWNLOAD_LENGTH, decodeDownloadRequest],
  ['decodeStatReply', STAT_REPLY_LENGTH, decodeStatReply],
  ['decodeUploadCreate', UPLOAD_CREATE_LENGTH, decodeUploadCreate],
  [
    'decodeUploadAppendPrefix',
    UPLOAD_APPEND_PREFIX,
    (b) => decodeUploadAppendPrefix(b, UPLOAD_APPEND_PREFIX + (b[0] ?? 0)),
  ],
  ['decodeUploadOffsetReply', 16, decodeUploadOffsetReply],
];

describe('(c) decoders return a value or throw ProtocolError', () => {
  for (const [name, length, decode] of DECODERS) {
    it(`${name}: arbitrary bytes of the right length`, () => {
      const arb = length === null ? anyBytes(1100) : bytesOf(length);
      fc.assert(
        fc.property(arb, (b) => valueOrProtocolError(() => decode(b))),
        FEW_RUNS,
      );
    });
    if (name !== 'decodeHeader' && length !== null) {
      it(`${name}: arbitrary bytes of any length`, () => {
        fc.assert(
          fc.property(anyBytes(length + 20), (b) => valueOrProtocolError(() => decode(b))),
          FEW_RUNS,
        );
      });
    }
  }
  it('parseAddress: arbitrary text', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary' }), (s) => valueOrProtocolError(() => parseAddress(s))),
      RUNS,
    );
  });
  it('decodeClusterStatus: valid JSON of the wrong shape is a ProtocolError', () => {
    for (const s of ['null', '1', '[]', '"x"', '{}', '{"groups":1}']) {
      expect(() => decodeClusterStatus(encodeCString(s))).toThrow(ProtocolError);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// (d) Chunking invariance on random valid frame sequences
// ---------------------------------------------------------------------------------------------

const smallContent = fc.uint8Array({ maxLength: 300 });

/** One valid storage request frame (buffered or streamed). */
const storageFrame: fc.Arbitrary<Uint8Array> = fc.oneof(
  fc
    .record({ ids, data: smallContent })
    .map(({ ids: v, data }) =>
      concatBytes([
        encodeStreamHeader(Command.STORAGE_UPLOAD, UPLOAD_PREFIX + data.length),
        encodeUploadPrefix({ ...v, size: data.length }),
        data,
      ]),
    ),
  fc
    .record({ ids, data: smallContent, offset: nonNegI64 })
    .map(({ ids: v, data, offset }) =>
      concatBytes([
        encodeStreamHeader(Command.STORAGE_UPLOAD_APPEND, UPLOAD_APPEND_PREFIX + data.length),
        encodeUploadAppendPrefix({ ...v, offset, length: data.length }),
        data,
      ]),
    ),
  fc
    .record({ ids, data: smallContent, ct: fixed(CONTENT_TYPE_WIDTH) })
    .map(({ ids: v, data, ct }) =>
      concatBytes([
        encodeStreamHeader(Command.STORAGE_UPLOAD_EXT, UPLOAD_EXT_PREFIX + data.length),
        encodeUploadExtPrefix({ ...v, contentType: ct, size: data.length }),
        data,
      ]),
    ),
  fc
    .record({ ids, offset: i64, size: i64 })
    .map(({ ids: v, offset, size }) =>
      encodeFrame(Command.STORAGE_DOWNLOAD, encodeDownloadRequest({ ...v, offset, size })),
    ),
  fc
    .record({ ids, totalSize: fc.integer({ min: -1, max: 2 ** 40 }), ct: fixed(CONTENT_TYPE_WIDTH) })
    .map(({ ids: v, totalSize, ct }) =>
      encodeFrame(Command.STORAGE_UPLOAD_CREATE, encodeUploadCreate({ ...v, totalSize, contentType: ct })),
    ),
  fc
    .record({
      ids,
      cmd: fc.constantFrom(
        Command.STORAGE_SIZE,
        Command.STORAGE_DELETE,
        Command.STORAGE_STAT,
        Command.STORAGE_UPLOAD_OFFSET,
        Command.STORAGE_UPLOAD_COMMIT,
        Command.STORAGE_UPLOAD_ABORT,
      ),
    })
    .map(({ ids: v, cmd }) => encodeFrame(cmd, encodeIds(v))),
  fc.constant(encodeFrame(Command.PING)),
);

/** One valid tracker request frame. */
const trackerFrame: fc.Arbitrary<Uint8Array> = fc.oneof(
  join.map((j) => encodeFrame(Command.TRACKER_JOIN, encodeJoin(j))),
  fc
    .record({ group: fixed(GROUPNAME_WIDTH), hostname: fixed(HOSTNAME_WIDTH) })
    .map((b) => encodeFrame(Command.TRACKER_BEAT, encodeBeat(b))),
  ids.map((v) => encodeFrame(Command.TRACKER_ADDRS, encodeAddrsRequest(v))),
  fc.constantFrom(
    encodeFrame(Command.TRACKER_GROUPS),
    encodeFrame(Command.TRACKER_STATUS),
    encodeFrame(Command.PING),
  ),
);

/** A sequence of download replies read as streams (empty and error replies mixed in). */
const downloadReplies: fc.Arbitrary<Uint8Array> = fc
  .array(
    fc.oneof(
      smallContent.map((d) => concatBytes([encodeStreamHeader(Command.STORAGE_REPLY, d.length), d])),
      text(100).map((m) =>
        encodeFrame(Command.STORAGE_REPLY, encodeErrorReply({ errno: 4, message: m }), Status.ERROR),
      ),
    ),
    { minLength: 1, maxLength: 6 },
  )
  .map(concatBytes);

describe('(d) chunking invariance', () => {
  const cases: readonly [string, SpecFn, fc.Arbitrary<Uint8Array>][] = [
    [
      'storage requests',
      requestSpecs(STORAGE_COMMANDS),
      fc.array(storageFrame, { minLength: 1, maxLength: 6 }).map(concatBytes),
    ],
    [
      'tracker requests',
      requestSpecs(TRACKER_COMMANDS),
      fc.array(trackerFrame, { minLength: 1, maxLength: 6 }).map(concatBytes),
    ],
    [
      'id requests',
      requestSpecs(ID_COMMANDS),
      fc
        .array(
          text(ID_KEY_MAX, 1).map((k) => encodeFrame(Command.ID_GET, encodeIdRequest(k))),
          { minLength: 1, maxLength: 6 },
        )
        .map(concatBytes),
    ],
    ['download replies (streamed)', replySpec(Command.STORAGE_REPLY, streamed()), downloadReplies],
    // Also for arbitrary (mostly invalid) input: the same events, errors included, whatever the cuts.
    ['arbitrary bytes, storage', requestSpecs(STORAGE_COMMANDS), plausibleStream],
  ];
  for (const [name, spec, arb] of cases) {
    it(name, () => {
      fc.assert(
        fc.property(
          arb.chain((b) => fc.tuple(fc.constant(b), cutsFor(b.length))),
          ([bytes, cuts]) => {
            const whole = new FrameReader(spec);
            const expected = normalize(whole.push(bytes));
            const cut = new FrameReader(spec);
            expect(normalize(pushCut(cut, bytes, cuts))).toEqual(expected);
            expect(cut.idle).toBe(whole.idle);
            expect(cut.dead).toBe(whole.dead);
            if (name !== 'arbitrary bytes, storage') {
              // Valid sequences: no error, nothing pending at the end.
              expect(expected.some((e) => (e as { type: string }).type === 'error')).toBe(false);
              expect(whole.idle).toBe(true);
            }
          },
        ),
        RUNS,
      );
    });
  }
});
