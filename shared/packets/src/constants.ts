/** Field widths and sizes of the seed protocol. Widths include the terminating NUL. */
export const HEADER_LENGTH = 10;
export const APPID_WIDTH = 16;
export const USERID_WIDTH = 256;
export const FILEID_WIDTH = 128;
export const VERSION_WIDTH = 7;
export const GROUPNAME_WIDTH = 17;
export const HOSTNAME_WIDTH = 129;
export const CONTENT_TYPE_WIDTH = 128;
export const TOKEN_WIDTH = 64;
export const SHA256_LENGTH = 32;
/** appid + userid + fileid: the prefix of every client → storage/tracker file request. */
export const IDS_LENGTH = APPID_WIDTH + USERID_WIDTH + FILEID_WIDTH;
/** Longest error description on the wire, NUL included. */
export const ERROR_DESC_MAX = 1024;
export const ERROR_BODY_MAX = 2 + ERROR_DESC_MAX;
/** An id key is at most 64 bytes + NUL. */
export const ID_KEY_MAX = 64;
/** Node-protocol auth: key id field (≤ 32 bytes + NUL), nonces and HMAC-SHA-256 proofs. */
export const KEY_ID_WIDTH = 33;
export const AUTH_NONCE_LENGTH = 32;
export const AUTH_PROOF_LENGTH = 32;
/** A request id (REQUEST_CONTEXT, messages/context.ts) is 1-64 bytes. */
export const REQUEST_ID_MAX = 64;
/** Largest body a u64/i64 field may carry and still be a safe JS number. */
export const MAX_SAFE_LENGTH = Number.MAX_SAFE_INTEGER;

export const Command = {
  /** Extension: liveness probe answered by every server with an empty OK. */
  PING: 1,
  /** Extension: node-protocol auth, step 1: the server's nonce (messages/auth.ts). */
  AUTH_CHALLENGE: 2,
  /** Extension: node-protocol auth, step 2: key id, client nonce and proof; the server's proof back. */
  AUTH_PROVE: 3,
  /** Extension: the request id of the next request on this connection; no reply (messages/context.ts). */
  REQUEST_CONTEXT: 4,
  TRACKER_JOIN: 10,
  TRACKER_BEAT: 11,
  TRACKER_ADDRS: 12,
  TRACKER_GROUPS: 13,
  /** Extension: join carrying protocol version, capacity, load and a shared secret. */
  TRACKER_JOIN_EXT: 14,
  /** Extension: heartbeat carrying port, capacity, load and pending heals. */
  TRACKER_BEAT_EXT: 15,
  /** Extension: cluster status as JSON (for `dsm status`). */
  TRACKER_STATUS: 16,
  /**
   * Extension: the storages of an already routed user (same body and reply as 12); NOT_FOUND
   * for a user without a route, so reads never create routes (only uploads use 12).
   */
  TRACKER_LOCATE: 17,
  ID_GET: 40,
  /** Extension: a range of consecutive ids for a key in one request (messages/id.ts). */
  ID_GET_RANGE: 41,
  STORAGE_UPLOAD: 70,
  STORAGE_SIZE: 71,
  STORAGE_DOWNLOAD: 72,
  STORAGE_DELETE: 73,
  /** Extensions, storage. */
  STORAGE_STAT: 74,
  STORAGE_UPLOAD_CREATE: 75,
  STORAGE_UPLOAD_APPEND: 76,
  STORAGE_UPLOAD_OFFSET: 77,
  STORAGE_UPLOAD_COMMIT: 78,
  STORAGE_UPLOAD_ABORT: 79,
  STORAGE_UPLOAD_EXT: 80,
  /** Extension: the group's deletes since a sequence number (messages/storage.ts). */
  STORAGE_DELETES: 81,
  TRACKER_REPLY: 100,
  ID_REPLY: 101,
  STORAGE_REPLY: 102,
} as const;
export type CommandCode = (typeof Command)[keyof typeof Command];

export const Status = {
  OK: 0,
  /** −3 as a signed byte. */
  ERROR: 0xfd,
} as const;

/**
 * Error numbers carried in error replies. The seed always sends −1; seed clients only look at
 * the header status, so finer numbers are compatible and let our clients tell "not found" from
 * "database down".
 */
export const Errno = {
  GENERIC: -1,
  BAD_LENGTH: 1,
  BAD_FIELD: 2,
  UNKNOWN_COMMAND: 3,
  NOT_FOUND: 4,
  DB_UNAVAILABLE: 5,
  IO_ERROR: 6,
  RANGE: 7,
  OFFSET_MISMATCH: 8,
  EXISTS: 9,
  UNAUTHORIZED: 10,
  NO_STORAGE: 11,
  UNKNOWN_APP: 12,
  TOO_LARGE: 13,
  ID_UNAVAILABLE: 14,
  BUSY: 15,
  NOT_JOINED: 16,
  INTERNAL: 17,
  NO_SPACE: 18,
} as const;
export type ErrnoCode = (typeof Errno)[keyof typeof Errno];

export const ERRNO_NAMES: Readonly<Record<number, string>> = Object.freeze(
  Object.fromEntries(Object.entries(Errno).map(([k, v]) => [v, k])),
);

/** Protocol version sent in the extension join; the seed sends the string "1.0". */
export const PROTOCOL_VERSION = 2;
export const SEED_VERSION_STRING = '1.0';

/** Storage states reported by the tracker. */
export const StorageState = { OFFLINE: 0, ONLINE: 1, ACTIVE: 2 } as const;
export type StorageStateCode = (typeof StorageState)[keyof typeof StorageState];
export const STORAGE_STATE_NAMES = ['OFFLINE', 'ONLINE', 'ACTIVE'] as const;
