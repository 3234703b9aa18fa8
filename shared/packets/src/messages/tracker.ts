import {
  decodeCString,
  encodeCString,
  readFixed,
  readI32,
  readI64,
  readU16,
  readU32,
  writeFixed,
  writeI32,
  writeI64,
  writeU16,
  writeU32,
} from '../bytes.ts';
import {
  Errno,
  GROUPNAME_WIDTH,
  HOSTNAME_WIDTH,
  IDS_LENGTH,
  TOKEN_WIDTH,
  VERSION_WIDTH,
} from '../constants.ts';
import { ProtocolError } from '../errors.ts';
import { encodeIds, type FileIds, readIds } from './ids.ts';

// ---------------------------------------------------------------------------------------------
// Join (10), storage → tracker, body 171 bytes:
// | 0   | 7   | version ("1.0")                  |
// | 7   | 17  | group name                       |
// | 24  | 129 | hostname                         |
// | 153 | 2   | advertised port, u16 BE          |
// | 155 | 8   | start time, i64 BE Unix seconds  |
// | 163 | 8   | join time, i64 BE Unix seconds   |
// ---------------------------------------------------------------------------------------------
export const JOIN_LENGTH = VERSION_WIDTH + GROUPNAME_WIDTH + HOSTNAME_WIDTH + 2 + 8 + 8;

export interface Join {
  version: string;
  group: string;
  hostname: string;
  port: number;
  startTime: number;
  joinTime: number;
}

function writeJoin(b: Uint8Array, j: Join): void {
  writeFixed(b, 0, VERSION_WIDTH, j.version, 'version');
  writeFixed(b, 7, GROUPNAME_WIDTH, j.group, 'group name');
  writeFixed(b, 24, HOSTNAME_WIDTH, j.hostname, 'hostname');
  writeU16(b, 153, j.port);
  writeI64(b, 155, j.startTime);
  writeI64(b, 163, j.joinTime);
}

function readJoin(b: Uint8Array): Join {
  return {
    version: readFixed(b, 0, VERSION_WIDTH, 'version'),
    group: readFixed(b, 7, GROUPNAME_WIDTH, 'group name'),
    hostname: readFixed(b, 24, HOSTNAME_WIDTH, 'hostname'),
    port: readU16(b, 153),
    startTime: readI64(b, 155, 'start time'),
    joinTime: readI64(b, 163, 'join time'),
  };
}

export function encodeJoin(j: Join): Uint8Array {
  const b = new Uint8Array(JOIN_LENGTH);
  writeJoin(b, j);
  return b;
}

export function decodeJoin(b: Uint8Array): Join {
  expectLength(b, JOIN_LENGTH);
  return readJoin(b);
}

// ---------------------------------------------------------------------------------------------
// Join, extension (14), body 257 bytes: the seed join (171) followed by
// | 171 | 2  | protocol version, u16                               |
// | 173 | 8  | total bytes of the data folder, i64                 |
// | 181 | 8  | free bytes, i64                                     |
// | 189 | 4  | load (requests in flight), u32                      |
// | 193 | 64 | shared secret (NUL-padded; empty when none is set)  |
// ---------------------------------------------------------------------------------------------
export const JOIN_EXT_LENGTH = JOIN_LENGTH + 2 + 8 + 8 + 4 + TOKEN_WIDTH;

export interface Capacity {
  totalBytes: number;
  freeBytes: number;
  load: number;
}

export interface JoinExt extends Join, Capacity {
  protocolVersion: number;
  secret: string;
}

export function encodeJoinExt(j: JoinExt): Uint8Array {
  const b = new Uint8Array(JOIN_EXT_LENGTH);
  writeJoin(b, j);
  writeU16(b, 171, j.protocolVersion);
  writeI64(b, 173, j.totalBytes);
  writeI64(b, 181, j.freeBytes);
  writeU32(b, 189, j.load);
  writeFixed(b, 193, TOKEN_WIDTH, j.secret, 'secret');
  return b;
}

export function decodeJoinExt(b: Uint8Array): JoinExt {
  expectLength(b, JOIN_EXT_LENGTH);
  return {
    ...readJoin(b),
    protocolVersion: readU16(b, 171),
    totalBytes: readI64(b, 173, 'total bytes'),
    freeBytes: readI64(b, 181, 'free bytes'),
    load: readU32(b, 189),
    secret: readFixed(b, 193, TOKEN_WIDTH, 'secret'),
  };
}

// ---------------------------------------------------------------------------------------------
// Heartbeat (11), body 146 bytes: group name (17) + hostname (129).
// ---------------------------------------------------------------------------------------------
export const BEAT_LENGTH = GROUPNAME_WIDTH + HOSTNAME_WIDTH;

export interface Beat {
  group: string;
  hostname: string;
}

export function encodeBeat(h: Beat): Uint8Array {
  const b = new Uint8Array(BEAT_LENGTH);
  writeFixed(b, 0, GROUPNAME_WIDTH, h.group, 'group name');
  writeFixed(b, 17, HOSTNAME_WIDTH, h.hostname, 'hostname');
  return b;
}

export function decodeBeat(b: Uint8Array): Beat {
  expectLength(b, BEAT_LENGTH);
  return {
    group: readFixed(b, 0, GROUPNAME_WIDTH, 'group name'),
    hostname: readFixed(b, 17, HOSTNAME_WIDTH, 'hostname'),
  };
}

// ---------------------------------------------------------------------------------------------
// Heartbeat, extension (15), body 173 bytes: the seed heartbeat (146) followed by
// | 146 | 2 | advertised port, u16 (identifies one of several storages on a host) |
// | 148 | 8 | total bytes, i64                                                     |
// | 156 | 8 | free bytes, i64                                                      |
// | 164 | 4 | load, u32                                                            |
// | 168 | 4 | pending heals of the group volume, i32 (−1 = unknown / not GlusterFS) |
// | 172 | 1 | store flags, u8: bit 0 = the store refuses or stalls writes         |
// A 172-byte body (without the flags, as the first version sent it) is still accepted: the
// store counts as writable.
// ---------------------------------------------------------------------------------------------
export const BEAT_EXT_LENGTH = BEAT_LENGTH + 2 + 8 + 8 + 4 + 4 + 1;
/** The first version's body, without the store flags. */
export const BEAT_EXT_V1_LENGTH = BEAT_EXT_LENGTH - 1;
/** Store flags bit 0: a write probe of the store failed or did not finish in time. */
export const STORE_FLAG_NOT_WRITABLE = 0x01;

export interface BeatExt extends Beat, Capacity {
  port: number;
  pendingHeals: number;
  /** False when the storage's own write probe fails or stalls (e.g. GlusterFS quorum lost). */
  writable: boolean;
}

export function encodeBeatExt(h: BeatExt): Uint8Array {
  const b = new Uint8Array(BEAT_EXT_LENGTH);
  b.set(encodeBeat(h), 0);
  writeU16(b, 146, h.port);
  writeI64(b, 148, h.totalBytes);
  writeI64(b, 156, h.freeBytes);
  writeU32(b, 164, h.load);
  writeI32(b, 168, h.pendingHeals);
  b[172] = h.writable ? 0 : STORE_FLAG_NOT_WRITABLE;
  return b;
}

export function decodeBeatExt(b: Uint8Array): BeatExt {
  if (b.length !== BEAT_EXT_V1_LENGTH) expectLength(b, BEAT_EXT_LENGTH);
  return {
    ...decodeBeat(b.subarray(0, BEAT_LENGTH)),
    port: readU16(b, 146),
    totalBytes: readI64(b, 148, 'total bytes'),
    freeBytes: readI64(b, 156, 'free bytes'),
    load: readU32(b, 164),
    pendingHeals: readI32(b, 168),
    writable: b.length === BEAT_EXT_V1_LENGTH || ((b[172] as number) & STORE_FLAG_NOT_WRITABLE) === 0,
  };
}

// ---------------------------------------------------------------------------------------------
// Storage address list (12), client → tracker, body 400: the id block (file id unused).
// Reply body: group name (17) + "ip:port;ip:port;" + NUL.
// ---------------------------------------------------------------------------------------------
export const encodeAddrsRequest = (ids: FileIds): Uint8Array => encodeIds(ids);

export function decodeAddrsRequest(b: Uint8Array): FileIds {
  expectLength(b, IDS_LENGTH);
  return readIds(b);
}

// ---------------------------------------------------------------------------------------------
// Locate (17), extension, client → tracker: the body and reply of 12, but the tracker only looks
// the route up (cache → t_router) and never assigns one: a user without a route gets an error
// reply with errno NOT_FOUND and the text a storage gives for a missing file
// ("Read Database Fail, Fileid: <file id>"), so a read cannot tell an unknown user from a
// missing file. The file id is carried for that text only.
// ---------------------------------------------------------------------------------------------
export const encodeLocateRequest = (ids: FileIds): Uint8Array => encodeIds(ids);

export function decodeLocateRequest(b: Uint8Array): FileIds {
  expectLength(b, IDS_LENGTH);
  return readIds(b);
}

export interface Address {
  host: string;
  port: number;
}

export interface AddrsReply {
  group: string;
  addrs: Address[];
}

export function formatAddress(a: Address): string {
  return a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

export function parseAddress(text: string): Address {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(text.trim());
  const port = m ? Number(m[3]) : Number.NaN;
  if (!m || port < 1 || port > 65535) throw new ProtocolError(`Invalid Address: ${text}`, Errno.BAD_FIELD);
  return { host: (m[1] ?? m[2]) as string, port };
}

export function encodeAddrsReply(r: AddrsReply): Uint8Array {
  const text = encodeCString(r.addrs.map((a) => `${formatAddress(a)};`).join(''));
  const b = new Uint8Array(GROUPNAME_WIDTH + text.length);
  writeFixed(b, 0, GROUPNAME_WIDTH, r.group, 'group name');
  b.set(text, GROUPNAME_WIDTH);
  return b;
}

export function decodeAddrsReply(b: Uint8Array): AddrsReply {
  if (b.length < GROUPNAME_WIDTH + 1) {
    throw new ProtocolError(`Invalid Body Length: ${b.length} < ${GROUPNAME_WIDTH + 1}`, Errno.BAD_LENGTH);
  }
  const group = readFixed(b, 0, GROUPNAME_WIDTH, 'group name');
  const text = decodeCString(b.subarray(GROUPNAME_WIDTH));
  const addrs = text
    .split(';')
    .filter((s) => s.length > 0)
    .map(parseAddress);
  return { group, addrs };
}

// ---------------------------------------------------------------------------------------------
// Group list (13) and cluster status (16): request body empty; reply body = text + NUL
// (13: the seed's human-readable text; 16: JSON, see ClusterStatus).
// ---------------------------------------------------------------------------------------------
export const encodeText = encodeCString;
export const decodeText = decodeCString;

export interface StorageStatus {
  group: string;
  hostname: string;
  host: string;
  port: number;
  version: string;
  protocolVersion: number;
  state: 'OFFLINE' | 'ONLINE' | 'ACTIVE';
  startTime: number;
  joinTime: number;
  beatTime: number;
  totalBytes: number;
  freeBytes: number;
  load: number;
  pendingHeals: number;
  /** The storage's store takes writes (its write probe passes); absent from older trackers. */
  writable?: boolean;
}

export interface ClusterStatus {
  tracker: string;
  now: number;
  groups: { name: string; storages: StorageStatus[] }[];
}

export function encodeClusterStatus(s: ClusterStatus): Uint8Array {
  return encodeCString(JSON.stringify(s));
}

export function decodeClusterStatus(b: Uint8Array): ClusterStatus {
  let v: unknown;
  try {
    v = JSON.parse(decodeCString(b));
  } catch {
    throw new ProtocolError('Invalid Cluster Status', Errno.BAD_FIELD);
  }
  // Valid JSON of the wrong shape (`null`, `1`, `[]`) would only fail later, in the caller.
  if (typeof v !== 'object' || v === null || !Array.isArray((v as { groups?: unknown }).groups)) {
    throw new ProtocolError('Invalid Cluster Status', Errno.BAD_FIELD);
  }
  return v as ClusterStatus;
}

function expectLength(b: Uint8Array, n: number): void {
  if (b.length !== n) throw new ProtocolError(`Invalid Body Length: ${b.length} != ${n}`, Errno.BAD_LENGTH);
}
