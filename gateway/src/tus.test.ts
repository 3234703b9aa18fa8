import { createHash } from 'node:crypto';
import { type AddressInfo, connect, createServer, type Socket } from 'node:net';
import { Redis } from 'ioredis';
import { Upload } from 'tus-js-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mintToken } from './auth.ts';
import type { RunningGateway } from './node.ts';
import { curl, parseHead, patternBytes, REDIS_URL, redisKv, type Stack, startStack } from './test-support.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const prefix = `dsm_gw_tus_${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}:`;
const cache = `${REDIS_URL}/0?prefix=${prefix}`;

let s: Stack;
let a: RunningGateway;
let b: RunningGateway;

beforeAll(async () => {
  (await redisKv(prefix)).close(); // fails clearly when Redis is not there
  s = await startStack('sqlite+memory', { cache, maxUploadBytes: 64 * MiB, uploadBlockBytes: 256 * KiB });
  a = s.gateway;
  b = await s.startGateway({ cache, maxUploadBytes: 64 * MiB, uploadBlockBytes: 256 * KiB });
});

afterAll(async () => {
  await s?.stop();
  const redis = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1 });
  const keys = await redis.keys(`${prefix}*`);
  if (keys.length) await redis.del(...keys);
  redis.disconnect();
});

const sha256 = (x: Buffer) => createHash('sha256').update(x).digest('hex');
const TUS = { 'Tus-Resumable': '1.0.0' };

async function create(
  g: RunningGateway,
  headers: Record<string, string>,
  body?: Buffer<ArrayBuffer>,
): Promise<Response> {
  return fetch(`${g.url}/tus/`, { method: 'POST', headers: { ...TUS, ...headers }, body });
}

async function patch(
  url: string,
  offset: number,
  body: Buffer<ArrayBuffer>,
  extra: Record<string, string> = {},
) {
  return fetch(url, {
    method: 'PATCH',
    headers: {
      ...TUS,
      'Upload-Offset': String(offset),
      'Content-Type': 'application/offset+octet-stream',
      ...extra,
    },
    body,
  });
}

const offsetOf = async (url: string) =>
  Number((await fetch(url, { method: 'HEAD', headers: TUS })).headers.get('upload-offset'));

/**
 * A TCP relay to a gateway that passes client bytes at a limited pace, like a phone's uplink,
 * so an upload can be interrupted while its PATCH is really in flight.
 */
async function slowLink(port: number): Promise<{ url: string; close(): Promise<void> }> {
  const conns = new Set<Socket>();
  const server = createServer((client) => {
    const up = connect(port, '127.0.0.1');
    conns.add(client).add(up);
    client.on('data', (chunk) => {
      up.write(chunk);
      client.pause();
      setTimeout(() => client.resume(), 4);
    });
    up.pipe(client);
    const end = () => {
      client.destroy();
      up.destroy();
    };
    client.on('close', end).on('error', end);
    up.on('close', end).on('error', end);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () =>
      new Promise<void>((r) => {
        for (const c of conns) c.destroy();
        server.close(() => r());
      }),
  };
}

describe('tus-js-client', () => {
  it('resumes an interrupted upload on a second gateway and ends with a byte-equal file', async () => {
    const data = patternBytes(8 * MiB + 321, 21);
    let uploadUrl = '';
    const link = await slowLink(a.port);
    // 1st attempt on gateway A (through a slow link): one PATCH for the whole file, aborted
    // a quarter in
    await new Promise<void>((resolve, reject) => {
      const up = new Upload(data, {
        endpoint: `${link.url}/tus/`,
        metadata: { filename: 'movie.mp4', filetype: 'video/mp4' },
        retryDelays: [],
        onProgress(sent) {
          if (sent > 2 * MiB && up.url) {
            uploadUrl = up.url;
            void up.abort().then(() => resolve());
          }
        },
        onError: reject,
        onSuccess: () => reject(new Error('the upload should have been interrupted')),
      });
      up.start();
    });
    await link.close();
    expect(uploadUrl.startsWith(`${link.url}/tus/`)).toBe(true);
    const onB = uploadUrl.replace(link.url, b.url);
    // the torn PATCH keeps what reached the storage; wait until the offset settles
    // (the same offset 5 times over half a second: on a loaded machine the gateway may still be
    // appending the last block of the torn PATCH for a while)
    let offset = -1;
    let same = 0;
    for (let i = 0; i < 150 && same < 5; i++) {
      await new Promise((r) => setTimeout(r, 100));
      const now = await offsetOf(onB);
      same = now === offset ? same + 1 : 0;
      offset = now;
    }
    expect(offset).toBeGreaterThan(0);
    expect(offset).toBeLessThan(data.length);

    // 2nd attempt on gateway B, same upload URL (state in the shared Redis)
    let fileId = '';
    let resumedFrom = -1;
    await new Promise<void>((resolve, reject) => {
      const up = new Upload(data, {
        endpoint: `${b.url}/tus/`,
        uploadUrl: onB,
        retryDelays: [0, 200, 500, 1000],
        onAfterResponse(req, res) {
          if (req.getMethod() === 'HEAD' && resumedFrom < 0)
            resumedFrom = Number(res.getHeader('Upload-Offset'));
          fileId = res.getHeader('Dsm-File-Id') ?? fileId;
        },
        onError: reject,
        onSuccess: () => resolve(),
      });
      up.start();
    });
    expect(resumedFrom).toBe(offset);
    expect(fileId).toBe(onB.slice(onB.lastIndexOf('/') + 1));

    // GET on the upload URL (either gateway) and /files/<id> serve the committed file
    const viaTus = Buffer.from(await (await fetch(uploadUrl.replace(link.url, a.url))).arrayBuffer());
    expect(sha256(viaTus)).toBe(sha256(data));
    const r = await fetch(`${b.url}/files/${fileId}`);
    expect(r.headers.get('content-type')).toBe('video/mp4');
    expect(Buffer.from(await r.arrayBuffer()).equals(data)).toBe(true);
    const head = await fetch(onB, { method: 'HEAD', headers: TUS });
    expect(head.headers.get('upload-offset')).toBe(String(data.length));
  });
});

describe('tus protocol (curl and fetch)', () => {
  it('advertises version, extensions, size limit and checksums on OPTIONS', async () => {
    const h = parseHead(String((await curl(['-i', '-X', 'OPTIONS', `${a.url}/tus/`])).stdout));
    expect(h.status).toBe(204);
    expect(h.headers).toMatchObject({
      'tus-version': '1.0.0',
      'tus-resumable': '1.0.0',
      'tus-extension': 'creation,creation-with-upload,termination,expiration,checksum',
      'tus-max-size': String(64 * MiB),
    });
    expect(h.headers['tus-checksum-algorithm']).toContain('sha1');
  });

  it('creates, appends in chunks (curl), checks offsets and content type, and commits', async () => {
    const data = patternBytes(300 * KiB, 3);
    const r = await curl([
      '-i',
      '-X',
      'POST',
      '-H',
      'Tus-Resumable: 1.0.0',
      '-H',
      `Upload-Length: ${data.length}`,
      '-H',
      `Upload-Metadata: filename ${Buffer.from('a.webm').toString('base64')}`,
      `${a.url}/tus/`,
    ]);
    const created = parseHead(String(r.stdout));
    expect(created.status).toBe(201);
    expect(Date.parse(created.headers['upload-expires'] as string)).toBeGreaterThan(Date.now());
    const url = created.headers.location as string;
    expect((await patch(url, 5, data.subarray(0, 10))).status).toBe(409);
    const wrongType = await fetch(url, {
      method: 'PATCH',
      headers: { ...TUS, 'Upload-Offset': '0', 'Content-Type': 'application/octet-stream' },
      body: data,
    });
    expect(wrongType.status).toBe(415);
    expect(wrongType.headers.get('content-type')).toBe('application/problem+json');
    const p1 = await patch(url, 0, data.subarray(0, 100 * KiB));
    expect(p1.status).toBe(204);
    expect(p1.headers.get('upload-offset')).toBe(String(100 * KiB));
    expect(p1.headers.get('dsm-file-id')).toBeNull();
    // the rest through gateway B
    const p2 = await patch(url.replace(a.url, b.url), 100 * KiB, data.subarray(100 * KiB));
    expect(p2.status).toBe(204);
    const id = p2.headers.get('dsm-file-id') as string;
    expect(id).toBe(url.slice(url.lastIndexOf('/') + 1));
    const got = await fetch(`${a.url}/files/${id}`);
    expect(got.headers.get('content-type')).toBe('video/webm');
    expect(Buffer.from(await got.arrayBuffer()).equals(data)).toBe(true);
    // once complete, a repeated final PATCH with no new bytes is answered as done
    expect((await patch(url, data.length, Buffer.alloc(0))).status).toBe(204);
  });

  it('refuses a missing Tus-Resumable, a missing length and an oversized length', async () => {
    const noVersion = await fetch(`${a.url}/tus/`, { method: 'POST', headers: { 'Upload-Length': '10' } });
    expect(noVersion.status).toBe(412);
    expect(noVersion.headers.get('tus-version')).toBe('1.0.0');
    expect((await create(a, {})).status).toBe(400);
    const big = await create(a, { 'Upload-Length': String(65 * MiB) });
    expect(big.status).toBe(413);
    expect(await big.json()).toMatchObject({ code: 'DSM_ERR_TOO_LARGE' });
  });

  it('verifies Upload-Checksum before any byte lands: 460 leaves the offset unchanged', async () => {
    const data = patternBytes(50 * KiB, 8);
    const url = (await create(a, { 'Upload-Length': String(data.length) })).headers.get('location') as string;
    const sha1 = (x: Buffer) => createHash('sha1').update(x).digest('base64');
    const bad = await patch(url, 0, data.subarray(0, 20 * KiB), { 'Upload-Checksum': `sha1 ${sha1(data)}` });
    expect(bad.status).toBe(460);
    expect(await bad.json()).toMatchObject({ code: 'DSM_ERR_CHECKSUM_MISMATCH' });
    expect(await offsetOf(url)).toBe(0);
    const first = data.subarray(0, 20 * KiB);
    const ok = await patch(url, 0, first, { 'Upload-Checksum': `sha1 ${sha1(first)}` });
    expect(ok.status).toBe(204);
    expect(await offsetOf(url)).toBe(20 * KiB);
    const unsupported = await patch(url, 20 * KiB, data.subarray(20 * KiB), {
      'Upload-Checksum': 'crc32 AAAA',
    });
    expect(unsupported.status).toBe(400);
  });

  it('supports creation-with-upload and a deferred length', async () => {
    const data = patternBytes(40 * KiB, 12);
    const r = await create(
      a,
      { 'Upload-Defer-Length': '1', 'Content-Type': 'application/offset+octet-stream' },
      data.subarray(0, 15 * KiB),
    );
    expect(r.status).toBe(201);
    expect(r.headers.get('upload-offset')).toBe(String(15 * KiB));
    const url = r.headers.get('location') as string;
    const h = await fetch(url, { method: 'HEAD', headers: TUS });
    expect(h.headers.get('upload-defer-length')).toBe('1');
    const done = await patch(url, 15 * KiB, data.subarray(15 * KiB), {
      'Upload-Length': String(data.length),
    });
    expect(done.status).toBe(204);
    const id = done.headers.get('dsm-file-id');
    expect(id).toBeTruthy();
    expect(Buffer.from(await (await fetch(`${a.url}/files/${id}`)).arrayBuffer()).equals(data)).toBe(true);
  });

  it('terminates an upload with a token: the partial file is deleted and the URL is gone; never anonymously', async () => {
    const secret = 'tus-termination-test-secret-0123456789';
    const j = await s.startGateway({
      cache,
      maxUploadBytes: 64 * MiB,
      auth: { mode: 'jwt', hs256Keys: { k1: secret } },
    });
    const auth = {
      Authorization: `Bearer ${await mintToken({ secret, kid: 'k1', app: 'tnvideo', sub: 'tnv001' })}`,
    };
    const before = s.dataFiles();
    const url = (await create(j, { 'Upload-Length': '1000', ...auth })).headers.get('location') as string;
    await patch(url, 0, patternBytes(100), auth);
    expect(s.dataFiles().length).toBe(before.length + 1);
    // anonymous termination is refused in every mode (here: mode none on gateway b, shared state)
    const anon = await fetch(url.replace(j.url, b.url), { method: 'DELETE', headers: TUS });
    expect(anon.status).toBe(403);
    expect((await fetch(url, { method: 'HEAD', headers: { ...TUS, ...auth } })).status).toBe(200);
    const d = await fetch(url, { method: 'DELETE', headers: { ...TUS, ...auth } });
    expect(d.status).toBe(204);
    expect((await fetch(url, { method: 'HEAD', headers: { ...TUS, ...auth } })).status).toBe(404);
    expect(s.dataFiles()).toEqual(before);
  });

  it('never lets two gateways append to one upload at once (423 while locked)', async () => {
    const total = 2 * MiB;
    const url = (await create(a, { 'Upload-Length': String(total) })).headers.get('location') as string;
    const path = new URL(url).pathname;
    // a slow client on gateway A: sends headers and part of the body, then waits
    const sock = connect(a.port, '127.0.0.1');
    await new Promise<void>((r) => sock.once('connect', () => r()));
    sock.write(
      `PATCH ${path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n` +
        `Content-Type: application/offset+octet-stream\r\nContent-Length: ${total}\r\n\r\n`,
    );
    sock.write(patternBytes(64 * KiB));
    await new Promise((r) => setTimeout(r, 300));
    const other = await patch(url.replace(a.url, b.url), 0, patternBytes(10));
    expect(other.status).toBe(423);
    expect(await other.json()).toMatchObject({ code: 'DSM_ERR_LOCKED' });
    sock.destroy();
    // the lock goes with the request; the upload continues where the slow client stopped
    let offset = -1;
    for (let i = 0; i < 40; i++) {
      await new Promise((r) => setTimeout(r, 50));
      const res = await patch(url.replace(a.url, b.url), await offsetOf(url), Buffer.alloc(0));
      if (res.status === 204) {
        offset = Number(res.headers.get('upload-offset'));
        break;
      }
    }
    expect(offset).toBeGreaterThan(0);
  });

  it('sweeps expired uploads: the partial goes from the storage and the URL answers 404', async () => {
    const c = await s.startGateway({ cache, tusExpiryMs: 1000, tusSweepIntervalMs: 0 });
    const before = s.dataFiles();
    const r = await create(c, { 'Upload-Length': '5000' });
    expect(Date.parse(r.headers.get('upload-expires') as string)).toBeLessThan(Date.now() + 5000);
    const url = r.headers.get('location') as string;
    await patch(url, 0, patternBytes(1000));
    expect(s.dataFiles().length).toBe(before.length + 1);
    await new Promise((res) => setTimeout(res, 1100));
    expect(await c.tus.sweep()).toBeGreaterThanOrEqual(1);
    expect((await fetch(url, { method: 'HEAD', headers: TUS })).status).toBe(404);
    expect(s.dataFiles()).toEqual(before);
  });
});
