import { type DsmClient, encodePublicId, newFileId, type UploadSource } from '@dsm/client';
import { DsmError, ErrorCode } from '@dsm/common/errors';
import type { Address, FileIds, FileStat } from '@dsm/packets';
import type { Principal } from './auth.ts';
import { typeForName } from './mime.ts';
import { boundaryOf, type MultipartLimits, MultipartReader } from './multipart.ts';
import { badRequest, tooLarge } from './problem.ts';
import { BlockReader, exactLength, limited, slices } from './streams.ts';

export interface StoredFile {
  publicId: string;
  ids: FileIds;
  stat: FileStat;
}

/** The retry of an upload whose body was already (partly) sent: the first failure is the answer. */
export class BodyNotReplayable extends DsmError {
  constructor() {
    super(ErrorCode.IO, 'the storage failed during the upload and the body cannot be replayed');
    this.name = 'BodyNotReplayable';
  }
}

/**
 * A request body can be read once (`replayable: false`: DsmClient opens it at most once; a
 * second open is refused all the same).
 */
export function oneShot(body: AsyncIterable<Uint8Array>, size: number): UploadSource {
  let opened = false;
  return {
    size,
    replayable: false,
    open() {
      if (opened) throw new BodyNotReplayable();
      opened = true;
      return body;
    },
  };
}

/** Content types the storage accepts (printable ASCII, ≤ 127 bytes); '' lets it sniff. */
export function cleanContentType(t: string | undefined | null): string {
  if (!t) return '';
  const v = t.trim();
  // No information (octet-stream), or curl's default for --data-binary: let the storage sniff.
  const lower = v.toLowerCase();
  if (lower === 'application/octet-stream' || lower.startsWith('application/x-www-form-urlencoded'))
    return '';
  return v.length <= 127 && /^[\x20-\x7e]+$/.test(v) ? v : '';
}

/** Uploads to the storages of a user's group: whole (size known) or in blocks (size unknown). */
export class Uploader {
  constructor(
    readonly client: DsmClient,
    readonly blockBytes: number,
  ) {}

  /** Runs `fn` on the members of the group of (app, user); they share the partial files. */
  onGroup<T>(ids: { appId: string; userId: string }, fn: (a: Address) => Promise<T>): Promise<T> {
    return this.client.onStorages(ids.appId, ids.userId, fn);
  }

  /**
   * One streamed upload frame of exactly `size` bytes; the storage commits it whole or not at all.
   * DsmClient sends the one-shot body at most once (a failure after that is the answer), and
   * when the reply is lost after the whole body went out it asks the group whether the file was
   * stored (docs/reliability.md, "Lost upload replies").
   */
  async uploadKnown(
    p: Principal,
    size: number,
    contentType: string,
    body: AsyncIterable<Uint8Array>,
  ): Promise<StoredFile> {
    const r = await this.client.upload({
      appId: p.appId,
      userId: p.userId,
      contentType,
      source: oneShot(exactLength(body, size), size),
    });
    return { publicId: r.publicId, ids: r.ids, stat: r.stat };
  }

  /**
   * A body of unknown length (chunked, multipart, …). A body that fits in one block goes up as
   * one upload; a longer one becomes a resumable upload (create with size −1, one append per
   * block, commit), aborted on any failure so nothing is left behind.
   */
  async uploadUnknown(
    p: Principal,
    contentType: string | (() => string),
    body: AsyncIterable<Uint8Array>,
    max: number,
    /** Runs after the body is fully read, before the commit (e.g. to check a multipart trailer). */
    beforeCommit?: () => Promise<void>,
  ): Promise<StoredFile> {
    const blocks = new BlockReader(limited(body, max), this.blockBytes);
    const first = await blocks.next();
    const type = () => (typeof contentType === 'function' ? contentType() : contentType);
    if (blocks.ended) {
      await beforeCommit?.();
      const b = first ?? new Uint8Array(0);
      return this.uploadKnown(p, b.length, type(), slices(b));
    }
    const ids: FileIds = { appId: p.appId, userId: p.userId, fileId: newFileId() };
    await this.onGroup(ids, (a) => this.client.storage.uploadCreate(a, ids, -1, type()));
    try {
      let offset = 0;
      for (let b = first; b; b = await blocks.next()) offset = await this.append(ids, offset, b);
      await beforeCommit?.();
      const stat = await this.onGroup(ids, (a) => this.client.storage.uploadCommit(a, ids));
      return { publicId: encodePublicId(ids), ids, stat };
    } catch (e) {
      await blocks.close().catch(() => {});
      await this.abort(ids);
      throw e;
    }
  }

  /** Appends an in-memory block (replayable, so any member of the group may take it). */
  append(ids: FileIds, offset: number, block: Uint8Array): Promise<number> {
    return this.onGroup(ids, (a) =>
      this.client.storage.uploadAppend(a, ids, offset, block.length, slices(block)),
    );
  }

  /** Best effort: drops a partial upload (the storages' own sweeper catches what this misses). */
  async abort(ids: FileIds): Promise<void> {
    try {
      await this.onGroup(ids, (a) => this.client.storage.uploadAbort(a, ids));
    } catch {
      // not found (already gone) or unreachable: nothing more to do here
    }
  }
}

/** Caps of a multipart/form-data upload (config `limits.multipart*`). */
export interface FormLimits extends MultipartLimits {
  /** Parts that are not the file. */
  maxFields: number;
  /** Bytes of all fields' names and values together. */
  maxFieldBytes: number;
}

/**
 * A multipart/form-data upload: the first part with a filename (or named "file") is streamed to
 * the storage, the other parts are small fields (`type`, `filename` are used). Everything held
 * in memory is bounded before it is taken: the parts, each part's headers, the number of
 * fields and their bytes, names included (30,000 empty fields with long names are refused at
 * the first field past the cap, not collected).
 */
export async function uploadMultipart(
  uploader: Uploader,
  p: Principal,
  body: AsyncIterable<Uint8Array>,
  contentType: string,
  max: number,
  limits: FormLimits,
  filenameFromQuery?: string,
): Promise<{ stored: StoredFile; filename: string | undefined }> {
  const boundary = boundaryOf(contentType);
  if (!boundary) throw badRequest('multipart/form-data without a boundary');
  const reader = new MultipartReader(body, boundary, limits);
  // a Map: field names come from the request, so `__proto__` or `constructor` are plain keys
  const fields = new Map<string, string>();
  let fieldCount = 0;
  let fieldBytes = 0;
  let filename = filenameFromQuery;
  for (let part = await reader.next(); part; part = await reader.next()) {
    if (part.filename !== undefined || part.name === 'file') {
      const filePart = part;
      const fileType = () =>
        cleanContentType(fields.get('type')) ||
        cleanContentType(filePart.contentType) ||
        typeForName(filePart.filename) ||
        typeForName(fields.get('filename')) ||
        '';
      filename = fields.get('filename') || filePart.filename || filename;
      const stored = await uploader.uploadUnknown(p, fileType, filePart.body, max, async () => {
        // the rest of the form must arrive whole (and within the caps) before the commit
        for (let rest = await reader.next(); rest; rest = await reader.next()) {
          for await (const _ of rest.body) {
            // later parts are read and dropped
          }
        }
      });
      return { stored, filename };
    }
    if (++fieldCount > limits.maxFields) throw tooLarge(`the form has more than ${limits.maxFields} fields`);
    fieldBytes += part.name.length;
    if (fieldBytes > limits.maxFieldBytes)
      throw tooLarge(`the form's fields exceed ${limits.maxFieldBytes} bytes`);
    const text = await MultipartReader.text(part, limits.maxFieldBytes - fieldBytes);
    fieldBytes += text.length;
    fields.set(part.name, text);
  }
  throw badRequest('the form has no file part (a part with a filename, or named "file")');
}
