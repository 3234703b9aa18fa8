import {
  Command,
  ERROR_BODY_MAX,
  Errno,
  ID_KEY_MAX,
  IDS_LENGTH,
  REQUEST_ID_MAX,
  Status,
} from './constants.ts';
import { ProtocolError } from './errors.ts';
import type { Header } from './header.ts';
import { AUTH_PROVE_LENGTH } from './messages/auth.ts';
import { ID_RANGE_REQUEST_MAX, ID_RANGE_REQUEST_MIN } from './messages/id.ts';
import {
  DELETES_REQUEST_LENGTH,
  DOWNLOAD_LENGTH,
  UPLOAD_APPEND_PREFIX,
  UPLOAD_CREATE_LENGTH,
  UPLOAD_EXT_PREFIX,
  UPLOAD_PREFIX,
} from './messages/storage.ts';
import {
  BEAT_EXT_LENGTH,
  BEAT_EXT_V1_LENGTH,
  BEAT_LENGTH,
  JOIN_EXT_LENGTH,
  JOIN_LENGTH,
} from './messages/tracker.ts';

/**
 * How a frame's body is read: `buffered` bodies are small and read whole (length checked against
 * [min, max] before any allocation); `stream` bodies have a fixed prefix that is buffered, and the
 * rest is handed on in chunks as it arrives (uploads, download replies).
 */
export type FrameSpec =
  | { kind: 'buffered'; min: number; max: number }
  | { kind: 'stream'; prefix: number; maxRest: number };

export type SpecFn = (h: Header) => FrameSpec | ProtocolError;

const exact = (n: number): FrameSpec => ({ kind: 'buffered', min: n, max: n });
const UNLIMITED = Number.MAX_SAFE_INTEGER;

/** Request body rules for every command a server accepts. */
export const REQUEST_SPECS: Readonly<Record<number, FrameSpec>> = Object.freeze({
  [Command.PING]: exact(0),
  [Command.AUTH_CHALLENGE]: exact(0),
  [Command.AUTH_PROVE]: exact(AUTH_PROVE_LENGTH),
  [Command.REQUEST_CONTEXT]: { kind: 'buffered', min: 1, max: REQUEST_ID_MAX },
  [Command.TRACKER_JOIN]: exact(JOIN_LENGTH),
  [Command.TRACKER_BEAT]: exact(BEAT_LENGTH),
  [Command.TRACKER_ADDRS]: exact(IDS_LENGTH),
  // The seed did not check this length, and a non-empty body desynchronised the stream.
  [Command.TRACKER_GROUPS]: exact(0),
  [Command.TRACKER_JOIN_EXT]: exact(JOIN_EXT_LENGTH),
  // 172 bytes from the first version (no store flags), 173 now
  [Command.TRACKER_BEAT_EXT]: { kind: 'buffered', min: BEAT_EXT_V1_LENGTH, max: BEAT_EXT_LENGTH },
  [Command.TRACKER_STATUS]: exact(0),
  [Command.TRACKER_LOCATE]: exact(IDS_LENGTH),
  [Command.ID_GET]: { kind: 'buffered', min: 0, max: ID_KEY_MAX + 1 },
  [Command.ID_GET_RANGE]: { kind: 'buffered', min: ID_RANGE_REQUEST_MIN, max: ID_RANGE_REQUEST_MAX },
  [Command.STORAGE_UPLOAD]: { kind: 'stream', prefix: UPLOAD_PREFIX, maxRest: UNLIMITED },
  [Command.STORAGE_SIZE]: exact(IDS_LENGTH),
  [Command.STORAGE_DOWNLOAD]: exact(DOWNLOAD_LENGTH),
  [Command.STORAGE_DELETE]: exact(IDS_LENGTH),
  [Command.STORAGE_STAT]: exact(IDS_LENGTH),
  [Command.STORAGE_UPLOAD_CREATE]: exact(UPLOAD_CREATE_LENGTH),
  [Command.STORAGE_UPLOAD_APPEND]: { kind: 'stream', prefix: UPLOAD_APPEND_PREFIX, maxRest: UNLIMITED },
  [Command.STORAGE_UPLOAD_OFFSET]: exact(IDS_LENGTH),
  [Command.STORAGE_UPLOAD_COMMIT]: exact(IDS_LENGTH),
  [Command.STORAGE_UPLOAD_ABORT]: exact(IDS_LENGTH),
  [Command.STORAGE_UPLOAD_EXT]: { kind: 'stream', prefix: UPLOAD_EXT_PREFIX, maxRest: UNLIMITED },
  [Command.STORAGE_DELETES]: exact(DELETES_REQUEST_LENGTH),
});

/** Every node serves these (auth and request context are served once, in @dsm/server, for all). */
const EVERY_NODE = [Command.PING, Command.AUTH_CHALLENGE, Command.AUTH_PROVE, Command.REQUEST_CONTEXT];

export const TRACKER_COMMANDS: readonly number[] = [
  ...EVERY_NODE,
  Command.TRACKER_JOIN,
  Command.TRACKER_BEAT,
  Command.TRACKER_ADDRS,
  Command.TRACKER_GROUPS,
  Command.TRACKER_JOIN_EXT,
  Command.TRACKER_BEAT_EXT,
  Command.TRACKER_STATUS,
  Command.TRACKER_LOCATE,
];
export const ID_COMMANDS: readonly number[] = [...EVERY_NODE, Command.ID_GET, Command.ID_GET_RANGE];
export const STORAGE_COMMANDS: readonly number[] = [
  ...EVERY_NODE,
  Command.STORAGE_UPLOAD,
  Command.STORAGE_SIZE,
  Command.STORAGE_DOWNLOAD,
  Command.STORAGE_DELETE,
  Command.STORAGE_STAT,
  Command.STORAGE_UPLOAD_CREATE,
  Command.STORAGE_UPLOAD_APPEND,
  Command.STORAGE_UPLOAD_OFFSET,
  Command.STORAGE_UPLOAD_COMMIT,
  Command.STORAGE_UPLOAD_ABORT,
  Command.STORAGE_UPLOAD_EXT,
  Command.STORAGE_DELETES,
];

export function lengthError(n: number, spec: FrameSpec): ProtocolError | null {
  if (n < 0) return new ProtocolError(`Invalid Body Length: ${n} < 0`, Errno.BAD_LENGTH);
  if (spec.kind === 'buffered') {
    if (n >= spec.min && n <= spec.max) return null;
    if (spec.min === spec.max)
      return new ProtocolError(`Invalid Body Length: ${n} != ${spec.min}`, Errno.BAD_LENGTH);
    if (n > spec.max) return new ProtocolError(`Invalid Body Length: ${n} > ${spec.max}`, Errno.BAD_LENGTH);
    return new ProtocolError(`Invalid Body Length: ${n} < ${spec.min}`, Errno.BAD_LENGTH);
  }
  if (n < spec.prefix)
    return new ProtocolError(`Invalid Body Length: ${n} < ${spec.prefix}`, Errno.BAD_LENGTH);
  if (n - spec.prefix > spec.maxRest) {
    return new ProtocolError(`File Too Large: ${n - spec.prefix} > ${spec.maxRest}`, Errno.TOO_LARGE);
  }
  return null;
}

/**
 * The spec function a server uses: its own commands only; `maxUpload` bounds streamed bodies.
 */
export function requestSpecs(commands: readonly number[], maxUpload = UNLIMITED): SpecFn {
  const allowed = new Set(commands);
  return (h) => {
    const spec = allowed.has(h.command) ? REQUEST_SPECS[h.command] : undefined;
    if (!spec) return new ProtocolError(`Unknown Command: ${h.command}`, Errno.UNKNOWN_COMMAND);
    return spec.kind === 'stream' ? { ...spec, maxRest: Math.min(spec.maxRest, maxUpload) } : spec;
  };
}

/**
 * The spec function a client uses for one reply: error replies are buffered (≤ 1026 bytes);
 * success replies follow `ok`. The reply command must be the expected one.
 */
export function replySpec(replyCommand: number, ok: FrameSpec): SpecFn {
  return (h) => {
    if (h.command !== replyCommand) {
      return new ProtocolError(`Unexpected Reply Command: ${h.command} != ${replyCommand}`, Errno.BAD_FIELD);
    }
    if (h.status !== Status.OK) return { kind: 'buffered', min: 2, max: ERROR_BODY_MAX };
    return ok;
  };
}

export const bufferedUpTo = (max: number): FrameSpec => ({ kind: 'buffered', min: 0, max });
export const exactly = exact;
export const streamed = (prefix = 0): FrameSpec => ({ kind: 'stream', prefix, maxRest: UNLIMITED });

/**
 * The spec function a client uses for the reply to AUTH_CHALLENGE / AUTH_PROVE: it comes with
 * the answering node's own reply command (100, 101 or 102), which a pooled client need not know.
 */
export function authReplySpec(ok: FrameSpec): SpecFn {
  const replies = new Set<number>([Command.TRACKER_REPLY, Command.ID_REPLY, Command.STORAGE_REPLY]);
  return (h) => {
    if (!replies.has(h.command)) {
      return new ProtocolError(`Unexpected Reply Command: ${h.command}`, Errno.BAD_FIELD);
    }
    if (h.status !== Status.OK) return { kind: 'buffered', min: 2, max: ERROR_BODY_MAX };
    return ok;
  };
}
