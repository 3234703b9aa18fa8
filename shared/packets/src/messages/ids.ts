import { readFixed, readFixedBytes, writeFixed } from '../bytes.ts';
import { APPID_WIDTH, FILEID_WIDTH, IDS_LENGTH, USERID_WIDTH } from '../constants.ts';

/**
 * The 400-byte id block that starts every file request (and the address-list request):
 * | offset | size | field    |
 * | 0      | 16   | app id   |
 * | 16     | 256  | user id  |
 * | 272    | 128  | file id  |
 * Fixed-width C strings: value up to the first NUL; bytes after it are ignored on read and zero on write.
 */
export interface FileIds {
  appId: string;
  userId: string;
  fileId: string;
}

export function writeIds(target: Uint8Array, offset: number, ids: FileIds): void {
  writeFixed(target, offset, APPID_WIDTH, ids.appId, 'APPID');
  writeFixed(target, offset + APPID_WIDTH, USERID_WIDTH, ids.userId, 'USERID');
  writeFixed(target, offset + APPID_WIDTH + USERID_WIDTH, FILEID_WIDTH, ids.fileId, 'FILEID');
}

export function readIds(source: Uint8Array, offset = 0): FileIds {
  return {
    appId: readFixed(source, offset, APPID_WIDTH, 'APPID'),
    userId: readFixed(source, offset + APPID_WIDTH, USERID_WIDTH, 'USERID'),
    fileId: readFixed(source, offset + APPID_WIDTH + USERID_WIDTH, FILEID_WIDTH, 'FILEID'),
  };
}

/** The user id's raw bytes, for the seed's table-sharding hash. */
export function readUserIdBytes(source: Uint8Array, offset = 0): Uint8Array {
  return readFixedBytes(source, offset + APPID_WIDTH, USERID_WIDTH, 'USERID');
}

export function encodeIds(ids: FileIds): Uint8Array {
  const b = new Uint8Array(IDS_LENGTH);
  writeIds(b, 0, ids);
  return b;
}
