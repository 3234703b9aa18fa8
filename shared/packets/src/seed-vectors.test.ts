/**
 * Byte-exact tests against frames captured between the original seed programs
 * (shared/packets/fixtures/seed-vectors.json, described in seed-vectors.md next to it).
 *
 * For every vector: the header is parsed, the body decoded with the codec of its command and
 * direction, the result compared with the vector's `fields`, and the frame re-encoded with our
 * encoders. Our encoders zero-pad fixed fields, so the re-encoded frame must equal the captured
 * one after the bytes following each fixed field's NUL are zeroed (the seed client leaves garbage
 * there; everybody else already zero-pads, which is checked too).
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { concatBytes, decodeCString, encodeCString, fromHex, readI64, toHex } from './bytes.ts';
import {
  APPID_WIDTH,
  Command,
  Errno,
  FILEID_WIDTH,
  GROUPNAME_WIDTH,
  HEADER_LENGTH,
  HOSTNAME_WIDTH,
  IDS_LENGTH,
  Status,
  USERID_WIDTH,
  VERSION_WIDTH,
} from './constants.ts';
import { ProtocolError } from './errors.ts';
import { type FrameEvent, FrameReader } from './frame-reader.ts';
import {
  bufferedUpTo,
  exactly,
  type FrameSpec,
  ID_COMMANDS,
  replySpec,
  requestSpecs,
  type SpecFn,
  STORAGE_COMMANDS,
  streamed,
  TRACKER_COMMANDS,
} from './frame-spec.ts';
import { decodeHeader, encodeFrame, encodeHeader, encodeStreamHeader, type Header } from './header.ts';
import { decodeErrorReply, encodeErrorReply } from './messages/error-reply.ts';
import { decodeI64Body, decodeIdRequest, encodeI64Body, encodeIdRequest } from './messages/id.ts';
import { type FileIds, readIds } from './messages/ids.ts';
import {
  decodeDownloadRequest,
  decodeIdsRequest,
  decodeUploadPrefix,
  encodeDownloadRequest,
  encodeUploadPrefix,
  UPLOAD_PREFIX,
} from './messages/storage.ts';
import {
  BEAT_LENGTH,
  decodeAddrsReply,
  decodeAddrsRequest,
  decodeBeat,
  decodeJoin,
  decodeText,
  encodeAddrsReply,
  encodeAddrsRequest,
  encodeBeat,
  encodeJoin,
  encodeText,
  formatAddress,
  JOIN_LENGTH,
} from './messages/tracker.ts';

// ---------------------------------------------------------------------------------------------
// Loading. A missing or unreadable file must FAIL the run, never skip it.
// ---------------------------------------------------------------------------------------------

interface Vector {
  name: string;
  producer: string;
  direction: 'request' | 'reply';
  command: number;
  status: number;
  frame_hex?: string;
  declared_body_len: number;
  connection: number;
  server: 'tracker' | 'id' | 'storage';
  fields: Record<string, unknown>;
  notes: string;
}

// A copy of the shared reference's seed-vectors.json (and .md) kept in the repository, so a
// clone anywhere has it.
const VECTORS_URL = new URL('../fixtures/seed-vectors.json', import.meta.url);
const VECTORS_PATH = fileURLToPath(VECTORS_URL);

function loadVectors(): { vectors: Vector[]; error?: string } {
  if (!existsSync(VECTORS_PATH)) {
    return {
      vectors: [],
      error: `seed vectors file not found at ${VECTORS_PATH} (shared/packets/fixtures/seed-vectors.json, a copy of the seed capture)`,
    };
  }
  try {
    const parsed: unknown = JSON.parse(readFileSync(VECTORS_PATH, 'utf8'));
    if (!Array.isArray(parsed)) return { vectors: [], error: `${VECTORS_PATH} is not a JSON list` };
    return { vectors: parsed as Vector[] };
  } catch (e) {
    return { vectors: [], error: `cannot read seed vectors at ${VECTORS_PATH}: ${(e as Error).message}` };
  }
}

const loaded = loadVectors();
const vectors = loaded.vectors;
const byName = new Map(vectors.map((v) => [v.name, v]));

function vector(name: string): Vector {
  const v = byName.get(name);
  if (!v) throw new Error(`seed vector ${name} missing from ${VECTORS_PATH}`);
  return v;
}

function frameOf(v: Vector): Uint8Array {
  if (typeof v.frame_hex !== 'string')
    throw new Error(`${v.name}: no frame_hex (frames over 4 KiB unsupported)`);
  return fromHex(v.frame_hex);
}

/** The request a reply answers: the last request before it on the same connection. */
function requestFor(reply: Vector): Vector {
  const i = vectors.indexOf(reply);
  for (let j = i - 1; j >= 0; j--) {
    const v = vectors[j] as Vector;
    if (v.connection === reply.connection && v.direction === 'request') return v;
  }
  throw new Error(`${reply.name}: no request on connection ${reply.connection}`);
}

const REPLY_COMMAND = {
  tracker: Command.TRACKER_REPLY,
  id: Command.ID_REPLY,
  storage: Command.STORAGE_REPLY,
};
const SERVER_COMMANDS = { tracker: TRACKER_COMMANDS, id: ID_COMMANDS, storage: STORAGE_COMMANDS };

/** What a client expects as the success body of a reply to `requestCommand`. */
function okReplySpec(requestCommand: number): FrameSpec {
  switch (requestCommand) {
    case Command.TRACKER_ADDRS:
      return bufferedUpTo(GROUPNAME_WIDTH + 3 * 64 + 1);
    case Command.TRACKER_GROUPS:
      return bufferedUpTo(1 << 20);
    case Command.ID_GET:
    case Command.STORAGE_SIZE:
      return exactly(8);
    case Command.STORAGE_DOWNLOAD:
      return streamed();
    default:
      return exactly(0);
  }
}

function specFor(v: Vector): SpecFn {
  if (v.direction === 'request') return requestSpecs(SERVER_COMMANDS[v.server]);
  return replySpec(REPLY_COMMAND[v.server], okReplySpec(requestFor(v).command));
}

// ---------------------------------------------------------------------------------------------
// Fixed-field padding
// ---------------------------------------------------------------------------------------------

type Region = readonly [offset: number, width: number];
const ID_REGIONS: readonly Region[] = [
  [0, APPID_WIDTH],
  [APPID_WIDTH, USERID_WIDTH],
  [APPID_WIDTH + USERID_WIDTH, FILEID_WIDTH],
];
const JOIN_REGIONS: readonly Region[] = [
  [0, VERSION_WIDTH],
  [VERSION_WIDTH, GROUPNAME_WIDTH],
  [VERSION_WIDTH + GROUPNAME_WIDTH, HOSTNAME_WIDTH],
];
const BEAT_REGIONS: readonly Region[] = [
  [0, GROUPNAME_WIDTH],
  [GROUPNAME_WIDTH, HOSTNAME_WIDTH],
];

/** Body regions holding fixed-width C strings, per request command (for zero-padding). */
function fixedRegions(v: Vector, bodyLength: number): readonly Region[] {
  if (v.direction === 'reply') {
    return v.status === Status.OK && v.command === Command.TRACKER_REPLY && requestFor(v).command === 12
      ? [[0, GROUPNAME_WIDTH]]
      : [];
  }
  switch (v.command) {
    case Command.TRACKER_JOIN:
      return bodyLength === JOIN_LENGTH ? JOIN_REGIONS : [];
    case Command.TRACKER_BEAT:
      return BEAT_REGIONS;
    case Command.TRACKER_ADDRS:
    case Command.STORAGE_UPLOAD:
    case Command.STORAGE_SIZE:
    case Command.STORAGE_DOWNLOAD:
    case Command.STORAGE_DELETE:
      return bodyLength >= IDS_LENGTH ? ID_REGIONS : [];
    default:
      return [];
  }
}

/** True when every byte after the field's first NUL is zero. */
function paddingZero(body: Uint8Array, [off, width]: Region): boolean {
  const region = body.subarray(off, off + width);
  const nul = region.indexOf(0);
  return nul >= 0 && region.subarray(nul).every((b) => b === 0);
}

/** A copy of the frame with every byte after each fixed field's NUL set to zero. */
function zeroPadded(frame: Uint8Array, regions: readonly Region[]): Uint8Array {
  const out = frame.slice();
  for (const [off, width] of regions) {
    const start = HEADER_LENGTH + off;
    const nul = out.subarray(start, start + width).indexOf(0);
    if (nul >= 0) out.fill(0, start + nul, start + width);
  }
  return out;
}

function idFields(ids: FileIds, body: Uint8Array): Record<string, unknown> {
  return {
    appid: ids.appId,
    appid_padding_all_zero: paddingZero(body, ID_REGIONS[0] as Region),
    userid: ids.userId,
    userid_padding_all_zero: paddingZero(body, ID_REGIONS[1] as Region),
    fileid: ids.fileId,
    fileid_padding_all_zero: paddingZero(body, ID_REGIONS[2] as Region),
  };
}

const utf8Length = (s: string): number => new TextEncoder().encode(s).length;

/** The description of a seed error reply without its `[hostname] ` prefix. */
function seedMessage(reply: Vector): string {
  const text = String(reply.fields.text);
  expect(text.startsWith('[vm] '), `${reply.name}: text starts with the hostname`).toBe(true);
  return text.slice('[vm] '.length);
}

function expectProtocolError(fn: () => unknown, message: string, errno?: number): void {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught, `expected ProtocolError "${message}"`).toBeInstanceOf(ProtocolError);
  expect((caught as ProtocolError).message).toBe(message);
  if (errno !== undefined) expect((caught as ProtocolError).errno).toBe(errno);
}

/** The file used by the seed capture: byte i = i mod 256 (except the small 'hello' uploads). */
function patternAt(offset: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (offset + i) % 256;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Decoding one vector into the vector's `fields` shape, plus our re-encoding of it
// ---------------------------------------------------------------------------------------------

interface Decoded {
  fields: Record<string, unknown>;
  /** Our encoders' frame for the same values; null when our encoders refuse them. */
  reencoded: Uint8Array | null;
}

function decodeRequest(v: Vector, header: Header, body: Uint8Array): Decoded {
  switch (v.command) {
    case Command.TRACKER_JOIN: {
      if (body.length !== JOIN_LENGTH) {
        expectProtocolError(() => decodeJoin(body), `Invalid Body Length: ${body.length} != ${JOIN_LENGTH}`);
        return { fields: {}, reencoded: encodeFrame(v.command, body) };
      }
      const j = decodeJoin(body);
      return {
        fields: {
          version: j.version,
          group: j.group,
          hostname: j.hostname,
          port: j.port,
          start_time: j.startTime,
          join_time: j.joinTime,
          padding_all_zero: JOIN_REGIONS.every((r) => paddingZero(body, r)),
        },
        reencoded: encodeFrame(Command.TRACKER_JOIN, encodeJoin(j)),
      };
    }
    case Command.TRACKER_BEAT: {
      expect(body.length).toBe(BEAT_LENGTH);
      const b = decodeBeat(body);
      return {
        fields: {
          group: b.group,
          hostname: b.hostname,
          padding_all_zero: BEAT_REGIONS.every((r) => paddingZero(body, r)),
        },
        reencoded: encodeFrame(Command.TRACKER_BEAT, encodeBeat(b)),
      };
    }
    case Command.TRACKER_ADDRS: {
      const ids = decodeAddrsRequest(body);
      return {
        fields: idFields(ids, body),
        reencoded: encodeFrame(Command.TRACKER_ADDRS, encodeAddrsRequest(ids)),
      };
    }
    case Command.TRACKER_GROUPS:
      expect(body.length).toBe(0);
      return { fields: {}, reencoded: encodeFrame(Command.TRACKER_GROUPS) };
    case Command.ID_GET: {
      const raw = decodeCString(body);
      if (body.length > 65) {
        expectProtocolError(
          () => decodeIdRequest(body),
          `Invalid Body Length: ${body.length} > 65`,
          Errno.BAD_LENGTH,
        );
        expectProtocolError(() => encodeIdRequest(raw), `Invalid ID Key Length: ${utf8Length(raw)}`);
        return {
          fields: { key: raw, key_len: body.indexOf(0) },
          reencoded: encodeFrame(Command.ID_GET, encodeCString(raw)),
        };
      }
      const key = decodeIdRequest(body);
      return {
        fields: { key, key_len: utf8Length(key) },
        reencoded: encodeFrame(Command.ID_GET, encodeIdRequest(key)),
      };
    }
    case Command.STORAGE_UPLOAD: {
      expect(body.length).toBeGreaterThanOrEqual(UPLOAD_PREFIX);
      const prefix = body.subarray(0, UPLOAD_PREFIX);
      const content = body.subarray(UPLOAD_PREFIX);
      const declared = readI64(prefix, IDS_LENGTH, 'file size');
      let u: FileIds & { size: number };
      if (declared !== content.length) {
        expectProtocolError(
          () => decodeUploadPrefix(prefix, header.bodyLength),
          `Invalid File Size: ${declared} != ${content.length}`,
          Errno.BAD_LENGTH,
        );
        u = { ...readIds(prefix), size: declared };
      } else {
        u = decodeUploadPrefix(prefix, header.bodyLength);
      }
      return {
        fields: { ...idFields(u, body), file_size: u.size, content_len: content.length },
        reencoded: concatBytes([
          encodeStreamHeader(Command.STORAGE_UPLOAD, UPLOAD_PREFIX + content.length),
          encodeUploadPrefix(u),
          content,
        ]),
      };
    }
    case Command.STORAGE_SIZE:
    case Command.STORAGE_DELETE: {
      if (header.bodyLength < 0) {
        expect(body.length).toBe(0);
        expectProtocolError(
          () => encodeHeader({ bodyLength: header.bodyLength, command: v.command, status: 0 }),
          `Invalid Body Length: ${header.bodyLength} < 0`,
        );
        return { fields: {}, reencoded: null };
      }
      if (body.length !== IDS_LENGTH) {
        expectProtocolError(
          () => decodeIdsRequest(body),
          `Invalid Body Length: ${body.length} != ${IDS_LENGTH}`,
          Errno.BAD_LENGTH,
        );
        return { fields: {}, reencoded: encodeFrame(v.command, body) };
      }
      const ids = decodeIdsRequest(body);
      // The storage requests 71 and 73 carry exactly the id block, like the address list.
      return { fields: idFields(ids, body), reencoded: encodeFrame(v.command, encodeAddrsRequest(ids)) };
    }
    case Command.STORAGE_DOWNLOAD: {
      const d = decodeDownloadRequest(body);
      return {
        fields: { ...idFields(d, body), offset: d.offset, size: d.size },
        reencoded: encodeFrame(Command.STORAGE_DOWNLOAD, encodeDownloadRequest(d)),
      };
    }
    default:
      // Unknown commands (99): header only.
      expect(body.length).toBe(0);
      return { fields: {}, reencoded: encodeFrame(v.command) };
  }
}

function decodeReply(v: Vector, body: Uint8Array): Decoded {
  if (v.status !== Status.OK) {
    expect(v.status).toBe(Status.ERROR);
    const e = decodeErrorReply(body);
    const nul = body.indexOf(0, 2);
    return {
      fields: { errno: e.errno, text: e.message, text_nul_terminated: nul === body.length - 1 },
      reencoded: encodeFrame(v.command, encodeErrorReply(e), Status.ERROR),
    };
  }
  const request = requestFor(v);
  switch (request.command) {
    case Command.TRACKER_ADDRS: {
      const r = decodeAddrsReply(body);
      return {
        fields: {
          group: r.group,
          group_padding_all_zero: paddingZero(body, [0, GROUPNAME_WIDTH]),
          addrs: r.addrs.map((a) => `${formatAddress(a)};`).join(''),
        },
        reencoded: encodeFrame(v.command, encodeAddrsReply(r)),
      };
    }
    case Command.TRACKER_GROUPS: {
      const text = decodeText(body);
      expect(body.indexOf(0), 'group text: exactly one NUL, at the end').toBe(body.length - 1);
      return { fields: { text }, reencoded: encodeFrame(v.command, encodeText(text)) };
    }
    case Command.ID_GET: {
      const id = decodeI64Body(body, 'id');
      return { fields: { id }, reencoded: encodeFrame(v.command, encodeI64Body(id)) };
    }
    case Command.STORAGE_SIZE: {
      const size = decodeI64Body(body, 'file size');
      return { fields: { file_size: size }, reencoded: encodeFrame(v.command, encodeI64Body(size)) };
    }
    case Command.STORAGE_DOWNLOAD: {
      const d = decodeDownloadRequest(frameOf(request).subarray(HEADER_LENGTH));
      // The captured file is byte i = i mod 256; a download returns it from the requested offset.
      expect(toHex(body)).toBe(toHex(patternAt(d.offset, body.length)));
      return {
        fields: { data_len: body.length, data_sha256: createHash('sha256').update(body).digest('hex') },
        reencoded: concatBytes([encodeStreamHeader(v.command, body.length), body]),
      };
    }
    default:
      // join, heartbeat, upload, delete: empty OK.
      expect(body.length).toBe(0);
      return { fields: {}, reencoded: encodeFrame(v.command) };
  }
}

/** Runs a whole frame through a reader; returns the events. */
function readAll(spec: SpecFn, frame: Uint8Array): { reader: FrameReader; events: FrameEvent[] } {
  const reader = new FrameReader(spec);
  return { reader, events: reader.push(frame) };
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

describe('seed vectors file', () => {
  it('is present and holds the 83 captured frames', () => {
    if (loaded.error) expect.fail(loaded.error);
    expect(vectors).toHaveLength(83);
    expect(new Set(vectors.map((v) => v.name)).size).toBe(83);
    for (const v of vectors) expect(typeof v.frame_hex, `${v.name} has frame_hex`).toBe('string');
  });

  it('covers every seed command and reply code', () => {
    if (loaded.error) expect.fail(loaded.error);
    const seen = new Set(vectors.map((v) => v.command));
    for (const c of [10, 11, 12, 13, 40, 70, 71, 72, 73, 100, 101, 102])
      expect(seen.has(c), `command ${c}`).toBe(true);
  });
});

describe('every seed vector: header, decode, fields, re-encode', () => {
  for (const v of vectors) {
    it(`${v.name} (${v.producer}, cmd ${v.command}, status ${v.status})`, () => {
      const frame = frameOf(v);
      expect(frame.length).toBeGreaterThanOrEqual(HEADER_LENGTH);
      const header = decodeHeader(frame);
      expect(header.command).toBe(v.command);
      expect(header.status).toBe(v.status);
      expect(header.bodyLength).toBe(v.declared_body_len);
      expect(frame.length).toBe(HEADER_LENGTH + Math.max(0, v.declared_body_len));
      if (v.direction === 'request') expect(header.status, 'requests send status 0').toBe(0);

      const body = frame.subarray(HEADER_LENGTH);
      const decoded = v.direction === 'request' ? decodeRequest(v, header, body) : decodeReply(v, body);
      expect(decoded.fields).toEqual(v.fields);

      const regions = fixedRegions(v, body.length);
      const expected = zeroPadded(frame, regions);
      if (v.producer !== 'seed client') {
        expect(toHex(expected), 'frames not built by the seed client are already zero-padded').toBe(
          toHex(frame),
        );
      }
      if (decoded.reencoded === null) {
        expect(v.name).toBe('negative_len.request');
      } else {
        expect(toHex(decoded.reencoded)).toBe(toHex(expected));
      }
    });
  }
});

describe('seed client garbage padding', () => {
  it('the capture really has garbage after the NUL in seed client requests', () => {
    const garbage = vectors.filter(
      (v) =>
        v.producer === 'seed client' &&
        v.direction === 'request' &&
        v.command !== Command.TRACKER_GROUPS &&
        toHex(zeroPadded(frameOf(v), ID_REGIONS)) !== v.frame_hex,
    );
    expect(garbage.length).toBeGreaterThanOrEqual(10);
  });

  it('the ids read from garbage-padded frames equal the zero-padded request', () => {
    const clean = decodeAddrsRequest(frameOf(vector('addrs_zero_padded.request')).subarray(HEADER_LENGTH));
    for (const v of vectors.filter(
      (x) => x.producer === 'seed client' && x.command === Command.TRACKER_ADDRS,
    )) {
      expect(decodeAddrsRequest(frameOf(v).subarray(HEADER_LENGTH))).toEqual(clean);
    }
  });
});

describe('seed vectors through the FrameReader', () => {
  /** Request vectors the reader or the request codec refuses, with the seed's reply. */
  const REFUSED: readonly (readonly [
    request: string,
    reply: string,
    via: 'reader' | 'decodeUploadPrefix',
  ])[] = [
    ['idget_key70.request', 'idget_key70.reply', 'reader'],
    ['filesize_body10.request', 'filesize_body10.reply', 'reader'],
    ['join_short.request', 'join_short.reply', 'reader'],
    ['tracker_unknown_cmd.request', 'tracker_unknown_cmd.reply', 'reader'],
    ['id_unknown_cmd.request', 'id_unknown_cmd.reply', 'reader'],
    ['storage_unknown_cmd.request', 'storage_unknown_cmd.reply', 'reader'],
    ['negative_len.request', 'negative_len.reply', 'reader'],
    ['upload_bad_size.request', 'upload_bad_size.reply', 'decodeUploadPrefix'],
  ];
  const refusedNames = new Set(REFUSED.map(([r]) => r));

  for (const [reqName, replyName, via] of REFUSED) {
    it(`${reqName} is refused with the seed's text (${via})`, () => {
      const req = vector(reqName);
      const reply = vector(replyName);
      expect(reply.status).toBe(Status.ERROR);
      expect(reply.fields.errno).toBe(-1);
      const message = seedMessage(reply);
      const { reader, events } = readAll(requestSpecs(SERVER_COMMANDS[req.server]), frameOf(req));
      if (via === 'reader') {
        expect(events).toHaveLength(1);
        const e = events[0] as FrameEvent;
        expect(e.type).toBe('error');
        if (e.type !== 'error') return;
        expect(e.error).toBeInstanceOf(ProtocolError);
        expect(e.error.message).toBe(message);
        expect(e.header?.command).toBe(req.command);
        expect(reader.dead).toBe(true);
      } else {
        expect(events.map((e) => e.type)).toEqual(['head', 'end']);
        const head = events[0] as Extract<FrameEvent, { type: 'head' }>;
        expect(head.rest).toBe(0);
        expectProtocolError(
          () => decodeUploadPrefix(head.prefix, head.header.bodyLength),
          message,
          Errno.BAD_LENGTH,
        );
        expect(reader.idle).toBe(true);
      }
    });
  }

  it('negative_len.request: the error comes from the 10 header bytes alone, before any body', () => {
    const frame = frameOf(vector('negative_len.request'));
    expect(frame.length).toBe(HEADER_LENGTH);
    const reader = new FrameReader(requestSpecs(STORAGE_COMMANDS));
    expect(reader.push(frame.subarray(0, 9))).toEqual([]);
    const events = reader.push(frame.subarray(9));
    expect(events).toHaveLength(1);
    const e = events[0] as Extract<FrameEvent, { type: 'error' }>;
    expect(e.type).toBe('error');
    expect(e.error.message).toBe('Invalid Body Length: -1 < 0');
    expect(e.error.errno).toBe(Errno.BAD_LENGTH);
    expect(e.header?.bodyLength).toBe(-1);
    expect(reader.dead).toBe(true);
    // Anything after it (a would-be body or the next frame) is ignored.
    expect(reader.push(new Uint8Array(100))).toEqual([]);
  });

  it('a negative length is refused before the command is looked at (seed order)', () => {
    const header = frameOf(vector('negative_len.request')).slice();
    header[8] = 99; // unknown command
    for (const commands of [STORAGE_COMMANDS, TRACKER_COMMANDS, ID_COMMANDS]) {
      const events = new FrameReader(requestSpecs(commands)).push(header);
      expect(events).toHaveLength(1);
      expect(events[0]?.type === 'error' && events[0].error.message).toBe('Invalid Body Length: -1 < 0');
    }
  });

  it('the most negative length is reported exactly', () => {
    const frame = new Uint8Array(HEADER_LENGTH);
    frame[0] = 0x80;
    frame[8] = Command.STORAGE_SIZE;
    const events = new FrameReader(requestSpecs(STORAGE_COMMANDS)).push(frame);
    expect(events[0]?.type === 'error' && events[0].error.message).toBe(
      'Invalid Body Length: -9223372036854775808 < 0',
    );
  });

  it('every other request vector is accepted by its server and decodes as above', () => {
    for (const v of vectors.filter((x) => x.direction === 'request' && !refusedNames.has(x.name))) {
      const frame = frameOf(v);
      const { reader, events } = readAll(requestSpecs(SERVER_COMMANDS[v.server]), frame);
      expect(
        events.some((e) => e.type === 'error'),
        v.name,
      ).toBe(false);
      expect(reader.idle, v.name).toBe(true);
      const body = frame.subarray(HEADER_LENGTH);
      const first = events[0] as FrameEvent;
      if (v.command === Command.STORAGE_UPLOAD) {
        expect(events[0]?.type).toBe('head');
        expect(events.at(-1)?.type).toBe('end');
        if (first.type !== 'head') continue;
        expect(toHex(first.prefix)).toBe(toHex(body.subarray(0, UPLOAD_PREFIX)));
        const data = concatBytes(events.flatMap((e) => (e.type === 'data' ? [e.chunk] : [])));
        expect(toHex(data)).toBe(toHex(body.subarray(UPLOAD_PREFIX)));
        const u = decodeUploadPrefix(first.prefix, first.header.bodyLength);
        expect(u.size).toBe(v.fields.file_size);
        if (v.name === 'upload.request') expect(toHex(data)).toBe(toHex(patternAt(0, 1063)));
        else expect(new TextDecoder().decode(data)).toBe('hello');
      } else {
        expect(events).toHaveLength(1);
        expect(first.type).toBe('frame');
        if (first.type === 'frame') expect(toHex(first.body)).toBe(toHex(body));
      }
    }
  });

  it('every reply vector is read by a client expecting it', () => {
    for (const v of vectors.filter((x) => x.direction === 'reply')) {
      const frame = frameOf(v);
      const { reader, events } = readAll(specFor(v), frame);
      expect(
        events.some((e) => e.type === 'error'),
        v.name,
      ).toBe(false);
      expect(reader.idle, v.name).toBe(true);
      const body = frame.subarray(HEADER_LENGTH);
      if (v.status === Status.OK && requestFor(v).command === Command.STORAGE_DOWNLOAD) {
        expect(events[0]?.type).toBe('head');
        expect(events.at(-1)?.type).toBe('end');
        const data = concatBytes(events.flatMap((e) => (e.type === 'data' ? [e.chunk] : [])));
        expect(toHex(data)).toBe(toHex(body));
      } else {
        expect(events).toHaveLength(1);
        const e = events[0] as FrameEvent;
        expect(e.type).toBe('frame');
        if (e.type === 'frame') expect(toHex(e.body)).toBe(toHex(body));
      }
    }
  });

  it('a reply with the wrong reply command is refused by the client', () => {
    const events = new FrameReader(replySpec(Command.ID_REPLY, exactly(8))).push(
      frameOf(vector('join.reply')),
    );
    expect(events[0]?.type === 'error' && events[0].error.message).toBe(
      'Unexpected Reply Command: 100 != 101',
    );
  });

  it('the duplicate upload got two seed error frames; both parse as error replies', () => {
    // We send ONE (see docs/protocol.md); a client reading the seed's must still cope.
    const r1 = vector('upload_duplicate.reply1');
    const r2 = vector('upload_duplicate.reply2');
    const reader = new FrameReader(replySpec(Command.STORAGE_REPLY, exactly(0)));
    const events = reader.push(concatBytes([frameOf(r1), frameOf(r2)]));
    expect(events.map((e) => e.type)).toEqual(['frame', 'frame']);
    const texts = events.map((e) => (e.type === 'frame' ? decodeErrorReply(e.body).message : ''));
    expect(texts).toEqual([r1.fields.text, r2.fields.text]);
  });

  it('the storage join connection (join + heartbeats) reads as one stream', () => {
    const conn1 = vectors.filter((v) => v.connection === 1);
    const requests = conn1.filter((v) => v.direction === 'request');
    const replies = conn1.filter((v) => v.direction === 'reply');
    const server = new FrameReader(requestSpecs(TRACKER_COMMANDS));
    const reqEvents = server.push(concatBytes(requests.map(frameOf)));
    expect(reqEvents.map((e) => e.type === 'frame' && e.header.command)).toEqual([10, 11, 11]);
    const client = new FrameReader(replySpec(Command.TRACKER_REPLY, exactly(0)));
    expect(client.push(concatBytes(replies.map(frameOf)))).toHaveLength(3);
  });
});
