import { decodePublicId, encodePublicId, newFileId } from '@dsm/client';
import { DsmError, ErrorCode, isDsmError } from '@dsm/common/errors';
import { concatBytes, Errno, type FileIds, fromBase64, toHex } from '@dsm/packets';
import type { Context } from 'hono';
import { type Principal, requireOwner } from './auth.ts';
import type { GatewayCore } from './core.ts';
import { fromUtf8 } from './encoding.ts';
import { serveFile } from './files.ts';
import { typeForName } from './mime.ts';
import { badRequest, GatewayErrorCode, HttpError, notFound, tooLarge } from './problem.ts';
import { BlockReader, bodyChunks, exactLength, limited } from './streams.ts';
import { cleanContentType, type Uploader } from './uploads.ts';

/**
 * tus 1.0 (https://tus.io/protocols/resumable-upload): core, creation, creation-with-upload,
 * termination, expiration, checksum. The upload id in the URL is the public id the file will
 * have, so a finished upload's URL keeps serving the file with no state at all.
 *
 * State (KvStore, Redis in production, so any gateway instance can continue an upload):
 *   gw:tus:u:<id>     JSON TusState, TTL = expiry + a grace period for the sweeper
 *   gw:tus:lock:<id>  per-upload lock (SET NX PX); one PATCH at a time across all gateways
 *   gw:tus:seq        counter; gw:tus:idx:<n> = upload id, for the sweeper to walk (same TTL as
 *                     the state, renewed with it: an index entry never outlives its upload)
 *   gw:tus:cursor     first index the sweeper still has to look at; gw:tus:sweep = its lock
 * The storage is the authority on an upload's offset (its partial file); the state holds who
 * owns the upload, its length, metadata and expiry. Only a holder of the upload's lock deletes
 * anything (a PATCH, a termination, the sweeper); HEAD and GET only read.
 */
export const TUS_VERSION = '1.0.0';
export const TUS_EXTENSIONS = 'creation,creation-with-upload,termination,expiration,checksum';
export const TUS_CHECKSUMS = 'sha1,sha256,sha512';
const OFFSET_TYPE = 'application/offset+octet-stream';
/** How long state outlives its expiry, so the sweeper still finds the upload to delete it. */
const STATE_GRACE_MS = 24 * 3600 * 1000;
const SWEEP_BATCH = 500;

export interface TusState {
  appId: string;
  userId: string;
  fileId: string;
  /** Storage group chosen at creation (the tracker's routing for the user). */
  group: string;
  /** Total length, −1 while deferred. */
  length: number;
  /** Offset after the last PATCH that went through this store (the storage's is authoritative). */
  offset: number;
  createdAt: number;
  expiresAt: number;
  /** The Upload-Metadata header as received, echoed on HEAD. */
  metadata: string;
  contentType: string;
  filename?: string;
  /** Its index entry (gw:tus:idx:<n>), whose TTL is renewed with the state's. */
  idx?: number;
}

const K = {
  state: (id: string) => `gw:tus:u:${id}`,
  lock: (id: string) => `gw:tus:lock:${id}`,
  seq: 'gw:tus:seq',
  idx: (n: number) => `gw:tus:idx:${n}`,
  cursor: 'gw:tus:cursor',
  sweep: 'gw:tus:sweep',
};

/**
 * For a store that keeps each upload's keys together and expires uploads itself (the Worker's
 * Durable Object, durable-kv.ts): which upload a key belongs to, and when the upload a state
 * value describes expires. The store stays a plain KvStore to this file.
 */
export const tusKeys = {
  /** The upload id of an upload's own keys (state, lock); undefined for the shared ones. */
  uploadOf(key: string): string | undefined {
    for (const p of [K.state(''), K.lock('')])
      if (key.startsWith(p) && key.length > p.length) return key.slice(p.length);
    return undefined;
  },
  /** For an upload's state: the Date.now() after which the upload has expired (expireUpload deletes it). */
  expiresAt(key: string, value: string): number | undefined {
    if (!key.startsWith(K.state(''))) return undefined;
    try {
      const t = (JSON.parse(value) as Partial<TusState>).expiresAt;
      return typeof t === 'number' && Number.isFinite(t) ? t + 1 : undefined;
    } catch {
      return undefined;
    }
  },
};

// Maps: names from headers never walk Object.prototype (`Upload-Checksum: constructor …`).
const ALGORITHMS = new Map([
  ['sha1', 'SHA-1'],
  ['sha256', 'SHA-256'],
  ['sha512', 'SHA-512'],
]);

/** `key base64,key2 base64,key3` → map (a key alone has no value). */
export function parseMetadata(header: string | undefined): Record<string, string | undefined> {
  // no prototype: keys like "__proto__" or "constructor" are plain keys
  const out: Record<string, string | undefined> = Object.create(null);
  if (!header) return out;
  for (const pair of header.split(',')) {
    const [key, value, extra] = pair.trim().split(/\s+/);
    if (!key || extra !== undefined || !/^[\x21-\x7e]+$/.test(key) || Object.hasOwn(out, key)) {
      throw badRequest('malformed Upload-Metadata');
    }
    if (value === undefined) {
      out[key] = undefined;
      continue;
    }
    try {
      out[key] = fromUtf8(fromBase64(value));
    } catch {
      throw badRequest(`Upload-Metadata value of "${key}" is not base64 UTF-8`);
    }
  }
  return out;
}

function parseNumber(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d{1,15}$/.test(v.trim())) throw badRequest(`bad ${name}`);
  return Number(v.trim());
}

const httpDate = (ms: number) => new Date(ms).toUTCString();

export class TusService {
  readonly #core: GatewayCore;

  constructor(core: GatewayCore) {
    this.#core = core;
  }

  #base(c: Context): string {
    return `${this.#core.baseUrl(c.req.url)}/tus`;
  }

  #checkVersion(c: Context): void {
    const v = c.req.header('tus-resumable');
    if (v !== TUS_VERSION) {
      throw new HttpError(412, GatewayErrorCode.TUS_VERSION, `Tus-Resumable must be ${TUS_VERSION}`, {
        headers: { 'Tus-Version': TUS_VERSION },
      });
    }
  }

  options(): Response {
    return new Response(null, {
      status: 204,
      headers: {
        'Tus-Version': TUS_VERSION,
        'Tus-Extension': TUS_EXTENSIONS,
        'Tus-Max-Size': String(this.#core.cfg.maxUploadBytes),
        'Tus-Checksum-Algorithm': TUS_CHECKSUMS,
      },
    });
  }

  async #getState(id: string): Promise<TusState | null> {
    const raw = await this.#core.kv.get(K.state(id));
    return raw ? (JSON.parse(raw) as TusState) : null;
  }

  /** How long an upload's keys live: its expiry plus the sweeper's grace. */
  #stateTtl(s: TusState): number {
    return Math.max(1, s.expiresAt - Date.now()) + STATE_GRACE_MS;
  }

  async #putState(id: string, s: TusState): Promise<void> {
    const ttl = this.#stateTtl(s);
    await this.#core.kv.set(K.state(id), JSON.stringify(s), ttl);
    if (s.idx !== undefined) await this.#core.kv.expire(K.idx(s.idx), ttl);
  }

  /** Takes the per-upload lock (renewed while held) or answers 423. */
  async #lock(id: string): Promise<() => Promise<void>> {
    const kv = this.#core.kv;
    const ttl = this.#core.cfg.tusLockTtlMs;
    const token = crypto.randomUUID();
    if (!(await kv.setIfAbsent(K.lock(id), token, ttl))) {
      throw new HttpError(
        423,
        GatewayErrorCode.LOCKED,
        'another request is writing to this upload; retry shortly',
        {
          headers: { 'Retry-After': '1' },
        },
      );
    }
    const timer = setInterval(
      () => {
        void kv
          .get(K.lock(id))
          .then((v) => (v === token ? kv.expire(K.lock(id), ttl) : false))
          .catch(() => {});
      },
      Math.max(100, Math.floor(ttl / 3)),
    );
    return async () => {
      clearInterval(timer);
      await kv.delIfValue(K.lock(id), token).catch(() => {});
    };
  }

  #ids(s: TusState): FileIds {
    return { appId: s.appId, userId: s.userId, fileId: s.fileId };
  }

  /**
   * The storage's offset of a live upload; a partial the storages no longer know is 404. With
   * `locked` (the caller holds the upload's lock) its state goes too; without (HEAD), nothing
   * is deleted.
   */
  async #storageOffset(id: string, s: TusState, locked: boolean, up: Uploader): Promise<number> {
    try {
      const r = await up.onGroup(s, (a) => up.client.storage.uploadOffset(a, this.#ids(s)));
      return r.offset;
    } catch (e) {
      if (isDsmError(e) && e.errno === Errno.NOT_FOUND) {
        if (locked) await this.#core.kv.del(K.state(id)).catch(() => {});
        throw notFound('this upload no longer exists');
      }
      throw e;
    }
  }

  async #expire(id: string, s: TusState, up = this.#core.uploader): Promise<void> {
    await up.abort(this.#ids(s));
    await this.#core.kv.del(K.state(id));
  }

  // POST /tus/ -------------------------------------------------------------------------------
  async create(c: Context): Promise<Response> {
    this.#checkVersion(c);
    const core = this.#core;
    const p = await core.principal(c);
    const lenH = c.req.header('upload-length');
    const deferH = c.req.header('upload-defer-length');
    if (c.req.header('upload-concat') !== undefined)
      throw badRequest('the concatenation extension is not supported');
    if (lenH !== undefined && deferH !== undefined)
      throw badRequest('Upload-Length and Upload-Defer-Length together');
    if (lenH === undefined && deferH !== '1')
      throw badRequest('Upload-Length or Upload-Defer-Length: 1 is required');
    const length = parseNumber(lenH, 'Upload-Length') ?? -1;
    if (length > core.cfg.maxUploadBytes) {
      throw tooLarge(`Upload-Length ${length} exceeds the limit of ${core.cfg.maxUploadBytes} bytes`);
    }
    const metaHeader = c.req.header('upload-metadata') ?? '';
    const meta = parseMetadata(metaHeader);
    const filename = meta.filename ?? meta.name;
    const contentType =
      cleanContentType(meta.filetype ?? meta.contentType ?? meta.type) || typeForName(filename) || '';
    const ids: FileIds = { appId: p.appId, userId: p.userId, fileId: newFileId() };
    const up = core.uploaderFor(c);
    const located = await up.client.locate(p.appId, p.userId);
    await up.onGroup(ids, (a) => up.client.storage.uploadCreate(a, ids, length, contentType));
    const id = encodePublicId(ids);
    const now = Date.now();
    const state: TusState = {
      ...ids,
      group: located.group,
      length,
      offset: 0,
      createdAt: now,
      expiresAt: now + core.cfg.tusExpiryMs,
      metadata: metaHeader,
      contentType,
      ...(filename ? { filename } : {}),
    };
    try {
      const n = await core.kv.incrBy(K.seq, 1);
      state.idx = n;
      await core.kv.set(K.idx(n), id, this.#stateTtl(state));
      await this.#putState(id, state);
    } catch (e) {
      // The KV store is down (503): without state nobody could continue or sweep this upload,
      // so it goes now rather than wait for the storages' own expiry.
      await up.abort(ids);
      await core.kv.del(K.state(id)).catch(() => {});
      throw e;
    }
    core.log.info({ uploadId: id, length, group: state.group }, 'tus upload created');

    const headers: Record<string, string> = {
      Location: `${this.#base(c)}/${id}`,
      'Upload-Expires': httpDate(state.expiresAt),
    };
    const hasBody = (c.req.header('content-type') ?? '').toLowerCase().startsWith(OFFSET_TYPE);
    if (length === 0) {
      const done = await this.#commit(id, state, up);
      headers['Upload-Offset'] = '0';
      headers['Dsm-File-Id'] = done;
    } else if (hasBody) {
      // creation-with-upload: the upload exists whatever happens to the body, so a failed
      // body still gets its 201 with the offset reached, and the client resumes from there.
      const unlock = await this.#lock(id);
      try {
        const r = await this.#append(c, id, state, 0);
        headers['Upload-Offset'] = String(r.offset);
        if (r.fileId) headers['Dsm-File-Id'] = r.fileId;
        headers['Upload-Expires'] = httpDate(r.expiresAt);
      } catch (e) {
        core.log.info({ err: e, uploadId: id }, 'creation-with-upload body failed; upload kept');
        headers['Upload-Offset'] = String(await this.#storageOffset(id, state, true, up).catch(() => 0));
      } finally {
        await unlock();
      }
    }
    return new Response(null, { status: 201, headers });
  }

  // HEAD /tus/:id -------------------------------------------------------------------------------
  async head(c: Context, id: string): Promise<Response> {
    this.#checkVersion(c);
    const core = this.#core;
    const p = await core.principal(c);
    const s = await this.#getState(id);
    const headers: Record<string, string> = { 'Cache-Control': 'no-store' };
    if (!s) {
      // A finished upload: its id is the file's public id.
      const ids = this.#completedIds(id);
      requireOwner(p, ids, core.cfg.auth.mode);
      const stat = await core.stat(id, ids, core.clientFor(c));
      headers['Upload-Offset'] = String(stat.size);
      headers['Upload-Length'] = String(stat.size);
      headers['Dsm-File-Id'] = id;
      return new Response(null, { status: 200, headers });
    }
    requireOwner(p, s, core.cfg.auth.mode);
    // HEAD holds no lock, so it only reports: the sweeper (under the lock) deletes
    if (s.expiresAt < Date.now()) throw new HttpError(410, GatewayErrorCode.GONE, 'this upload has expired');
    headers['Upload-Offset'] = String(await this.#storageOffset(id, s, false, core.uploaderFor(c)));
    if (s.length >= 0) headers['Upload-Length'] = String(s.length);
    else headers['Upload-Defer-Length'] = '1';
    if (s.metadata) headers['Upload-Metadata'] = s.metadata;
    headers['Upload-Expires'] = httpDate(s.expiresAt);
    return new Response(null, { status: 200, headers });
  }

  #completedIds(id: string): FileIds {
    try {
      return decodePublicId(id);
    } catch {
      throw notFound('no such upload');
    }
  }

  // PATCH /tus/:id ------------------------------------------------------------------------------
  async patch(c: Context, id: string): Promise<Response> {
    this.#checkVersion(c);
    const core = this.#core;
    if ((c.req.header('content-type') ?? '').toLowerCase().split(';')[0]?.trim() !== OFFSET_TYPE) {
      throw new HttpError(
        415,
        GatewayErrorCode.UNSUPPORTED_MEDIA_TYPE,
        `PATCH needs Content-Type: ${OFFSET_TYPE}`,
      );
    }
    const offset = parseNumber(c.req.header('upload-offset'), 'Upload-Offset');
    if (offset === undefined) throw badRequest('Upload-Offset is required');
    const p = await core.principal(c);
    const unlock = await this.#lock(id);
    try {
      const s = await this.#getState(id);
      if (!s) {
        // Already finished: a repeated final PATCH with nothing more to add is answered as done.
        const ids = this.#completedIds(id);
        requireOwner(p, ids, core.cfg.auth.mode);
        const stat = await core.stat(id, ids, core.clientFor(c)).catch(() => {
          throw notFound('no such upload');
        });
        if (offset !== stat.size) {
          throw new HttpError(409, ErrorCode.OFFSET_MISMATCH, `the upload is complete at ${stat.size} bytes`);
        }
        return new Response(null, {
          status: 204,
          headers: { 'Upload-Offset': String(stat.size), 'Dsm-File-Id': id },
        });
      }
      requireOwner(p, s, core.cfg.auth.mode);
      if (s.expiresAt < Date.now()) {
        await this.#expire(id, s, core.uploaderFor(c));
        throw new HttpError(410, GatewayErrorCode.GONE, 'this upload has expired');
      }
      const r = await this.#append(c, id, s, offset);
      const headers: Record<string, string> = {
        'Upload-Offset': String(r.offset),
        'Upload-Expires': httpDate(r.expiresAt),
      };
      if (r.fileId) headers['Dsm-File-Id'] = r.fileId;
      return new Response(null, { status: 204, headers });
    } finally {
      await unlock();
    }
  }

  /**
   * Appends a PATCH (or creation) body at `clientOffset` (lock held). With a Content-Length the
   * body streams to the storage as one append; without, it goes in blocks. With
   * `Upload-Checksum` the body is held (bounded) and appended only once its digest matches,
   * because the storage keeps every byte it receives (a cut append is kept, by design, so an
   * interrupted PATCH resumes where it stopped) and has no way to take bytes back.
   */
  async #append(
    c: Context,
    id: string,
    s: TusState,
    clientOffset: number,
  ): Promise<{ offset: number; fileId?: string; expiresAt: number }> {
    const core = this.#core;
    const ids = this.#ids(s);
    const up = core.uploaderFor(c);
    const current = await this.#storageOffset(id, s, true, up);
    if (clientOffset !== current) {
      throw new HttpError(409, ErrorCode.OFFSET_MISMATCH, `Upload-Offset ${clientOffset} != ${current}`, {
        headers: { 'Upload-Offset': String(current) },
      });
    }
    const max = core.cfg.maxUploadBytes;
    const newLength = parseNumber(c.req.header('upload-length'), 'Upload-Length');
    if (newLength !== undefined) {
      if (s.length >= 0 && newLength !== s.length) throw badRequest('Upload-Length cannot change');
      if (newLength < current) throw badRequest('Upload-Length is below the current offset');
      if (newLength > max) throw tooLarge(`Upload-Length ${newLength} exceeds the limit of ${max} bytes`);
      s.length = newLength;
    }
    const chunk = parseNumber(c.req.header('content-length'), 'Content-Length');
    const room = (s.length >= 0 ? s.length : max) - current;
    if (chunk !== undefined && chunk > room) {
      throw tooLarge(`the chunk (${chunk} bytes) goes past the upload's length`);
    }
    const checksum = this.#checksum(c.req.header('upload-checksum'));
    let received = 0;
    const body = (async function* () {
      for await (const b of bodyChunks(c.req.raw.body)) {
        received += b.length;
        yield b;
      }
    })();
    let offset = current;
    try {
      if (checksum) {
        const limit = Math.min(room, core.cfg.uploadBlockBytes);
        if (chunk !== undefined && chunk > limit) {
          throw tooLarge(`a PATCH with Upload-Checksum may carry at most ${limit} bytes`);
        }
        const parts: Uint8Array[] = [];
        for await (const b of limited(chunk === undefined ? body : exactLength(body, chunk), limit))
          parts.push(b);
        const data = concatBytes(parts);
        const digest = new Uint8Array(
          await crypto.subtle.digest(checksum.algorithm, data as Uint8Array<ArrayBuffer>),
        );
        if (toHex(digest) !== toHex(checksum.digest)) {
          throw new HttpError(
            460,
            GatewayErrorCode.CHECKSUM_MISMATCH,
            'Upload-Checksum does not match the body',
          );
        }
        if (data.length > 0) offset = await up.append(ids, offset, data);
      } else if (chunk !== undefined) {
        if (chunk > 0) {
          let opened = false;
          offset = await up.onGroup(ids, (a) => {
            // the body streams once; another member may take it only if nothing was sent yet
            if (opened) throw new DsmError(ErrorCode.IO, 'the storage failed during the append');
            opened = true;
            return up.client.storage.uploadAppend(a, ids, offset, chunk, exactLength(body, chunk));
          });
        }
      } else {
        const blocks = new BlockReader(limited(body, room), core.cfg.uploadBlockBytes);
        for (let b = await blocks.next(); b; b = await blocks.next())
          offset = await up.append(ids, offset, b);
      }
    } catch (e) {
      if (isDsmError(e) && e.errno === Errno.BUSY) {
        throw new HttpError(
          423,
          GatewayErrorCode.LOCKED,
          'the storage is busy with another append to this upload',
          {
            headers: { 'Retry-After': '1' },
          },
        );
      }
      throw e;
    } finally {
      core.metrics?.bytesIn('/tus/:id', received);
    }
    s.offset = offset;
    s.expiresAt = Date.now() + core.cfg.tusExpiryMs;
    if (s.length >= 0 && offset === s.length) {
      return { offset, fileId: await this.#commit(id, s, up), expiresAt: s.expiresAt };
    }
    await this.#putState(id, s);
    return { offset, expiresAt: s.expiresAt };
  }

  #checksum(h: string | undefined): { algorithm: string; digest: Uint8Array } | undefined {
    if (h === undefined) return undefined;
    const [name, value] = h.trim().split(/\s+/);
    const algorithm = ALGORITHMS.get((name ?? '').toLowerCase());
    if (!algorithm || !value) throw badRequest(`unsupported Upload-Checksum (use one of ${TUS_CHECKSUMS})`);
    try {
      return { algorithm, digest: fromBase64(value) };
    } catch {
      throw badRequest('Upload-Checksum value is not base64');
    }
  }

  /** Last byte in: commit on the storage, drop the state; returns the file's public id. */
  async #commit(id: string, s: TusState, up: Uploader): Promise<string> {
    const core = this.#core;
    const ids = this.#ids(s);
    await up.onGroup(ids, (a) => up.client.storage.uploadCommit(a, ids));
    await core.kv.del(K.state(id));
    core.log.info({ uploadId: id, size: s.length }, 'tus upload committed');
    return id;
  }

  // DELETE /tus/:id -----------------------------------------------------------------------------
  async terminate(c: Context, id: string): Promise<Response> {
    this.#checkVersion(c);
    const core = this.#core;
    const p: Principal = await core.principal(c, 'delete');
    const unlock = await this.#lock(id);
    try {
      const s = await this.#getState(id);
      if (!s) {
        // Finished uploads are files: terminating one deletes the file (as tusd does).
        const ids = this.#completedIds(id);
        requireOwner(p, ids, core.cfg.auth.mode);
        await core.clientFor(c).delete(ids);
        core.forget(id);
        return new Response(null, { status: 204 });
      }
      requireOwner(p, s, core.cfg.auth.mode);
      await this.#expire(id, s, core.uploaderFor(c));
      return new Response(null, { status: 204 });
    } finally {
      await unlock();
    }
  }

  // GET /tus/:id --------------------------------------------------------------------------------
  async get(c: Context, id: string): Promise<Response> {
    if (await this.#getState(id)) throw notFound('this upload is not complete yet');
    return serveFile(this.#core, c, id, { route: '/tus/:id' });
  }

  /**
   * Deletes one upload (storage partial + state) when it has expired by `now`, under its lock:
   * `expired` (deleted now), `gone` (no state: finished, terminated or already deleted), `live`
   * (not expired), `locked` (a request holds its lock: try later). The sweeper below and the
   * Worker's Durable Object alarm both use it.
   */
  async expireUpload(id: string, now = Date.now()): Promise<'expired' | 'gone' | 'live' | 'locked'> {
    const kv = this.#core.kv;
    const seen = await this.#getState(id);
    if (!seen) return 'gone';
    if (!(seen.expiresAt < now)) return 'live';
    const token = crypto.randomUUID();
    if (!(await kv.setIfAbsent(K.lock(id), token, this.#core.cfg.tusLockTtlMs))) return 'locked';
    try {
      // The decision is taken again under the lock: a PATCH may have finished (and moved the
      // expiry) between the read above and the lock, or the upload may be gone.
      const s = await this.#getState(id);
      if (!s) return 'gone';
      if (!(s.expiresAt < now)) return 'live';
      await this.#expire(id, s);
      this.#core.log.info({ uploadId: id }, 'expired tus upload deleted');
      return 'expired';
    } finally {
      await kv.delIfValue(K.lock(id), token);
    }
  }

  /**
   * Deletes expired uploads (storage partial + state). Walks the index from the cursor; the
   * cursor moves past entries that are finished (committed, terminated, swept), and entries
   * still live are looked at again next time. One gateway sweeps at a time (a KV lock).
   */
  async sweep(now = Date.now()): Promise<number> {
    const kv = this.#core.kv;
    const token = crypto.randomUUID();
    if (!(await kv.setIfAbsent(K.sweep, token, 5 * 60_000))) return 0;
    let swept = 0;
    try {
      const seq = Number((await kv.get(K.seq)) ?? 0);
      let cursor = Number((await kv.get(K.cursor)) ?? 0);
      let prefixDone = true;
      const end = Math.min(seq, cursor + SWEEP_BATCH);
      for (let n = cursor + 1; n <= end; n++) {
        const id = await kv.get(K.idx(n));
        const r = id ? await this.expireUpload(id, now) : 'gone';
        if (r === 'expired') swept++;
        const finished = r === 'expired' || r === 'gone';
        if (finished) await kv.del(K.idx(n));
        if (finished && prefixDone) cursor = n;
        else prefixDone = false;
      }
      await kv.set(K.cursor, String(cursor));
    } finally {
      await kv.delIfValue(K.sweep, token);
    }
    if (swept > 0) this.#core.metrics?.tusSwept?.(swept);
    return swept;
  }
}
