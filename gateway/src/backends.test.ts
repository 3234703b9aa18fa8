import { createHash } from 'node:crypto';
import { decodePublicId } from '@dsm/client';
import { BACKEND_NAMES } from '@dsm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { curl, parseHead, patternBytes, type Stack, startStack } from './test-support.ts';

const KiB = 1024;
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

// The main round trip on both backends: SQLite + in-process KV, MariaDB + Redis (the gateway's
// tus state in Redis too).
describe.each(BACKEND_NAMES)('round trip on %s', (backend) => {
  let s: Stack;

  beforeAll(async () => {
    s = await startStack(backend, { uploadBlockBytes: 128 * KiB });
  });

  afterAll(async () => {
    await s?.stop();
  });

  it('uploads (raw, chunked, multipart, tus), downloads whole and by range, revalidates, deletes', async () => {
    const url = s.gateway.url;
    const data = patternBytes(600 * KiB + 5, backend === 'mariadb+redis' ? 2 : 1);
    const raw = (await (
      await fetch(`${url}/files`, { method: 'POST', body: data, headers: { 'content-type': 'video/mp4' } })
    ).json()) as { id: string; url: string; sha256: string };
    expect(raw.sha256).toBe(sha256(data));

    const chunked = await fetch(`${url}/files`, {
      method: 'POST',
      body: new Blob([data]).stream(),
      duplex: 'half',
    } as RequestInit);
    expect(chunked.status).toBe(201);
    expect(((await chunked.json()) as { sha256: string }).sha256).toBe(sha256(data));

    const form = new FormData();
    form.append('file', new Blob([data], { type: 'video/mp4' }), 'v.mp4');
    const multi = await fetch(`${url}/files`, { method: 'POST', body: form });
    expect(((await multi.json()) as { sha256: string }).sha256).toBe(sha256(data));

    const created = await fetch(`${url}/tus/`, {
      method: 'POST',
      headers: { 'Tus-Resumable': '1.0.0', 'Upload-Length': String(data.length) },
    });
    const tusUrl = created.headers.get('location') as string;
    for (const [from, to] of [
      [0, 200 * KiB],
      [200 * KiB, data.length],
    ] as const) {
      const r = await fetch(tusUrl, {
        method: 'PATCH',
        headers: {
          'Tus-Resumable': '1.0.0',
          'Upload-Offset': String(from),
          'Content-Type': 'application/offset+octet-stream',
        },
        body: data.subarray(from, to),
      });
      expect(r.status).toBe(204);
    }
    expect(sha256(Buffer.from(await (await fetch(tusUrl)).arrayBuffer()))).toBe(sha256(data));

    const whole = (await curl([raw.url], { encoding: 'buffer' })).stdout as Buffer;
    expect(whole.equals(data)).toBe(true);
    const part = (await curl(['-r', '1000-2999', raw.url], { encoding: 'buffer' })).stdout as Buffer;
    expect(part.equals(data.subarray(1000, 3000))).toBe(true);
    const h = parseHead(String((await curl(['-I', '-H', `If-None-Match: "${raw.sha256}"`, raw.url])).stdout));
    expect(h.status).toBe(304);

    // anonymous deletes are refused (auth.mode none); the owner's client deletes
    expect((await fetch(raw.url, { method: 'DELETE' })).status).toBe(403);
    await s.gateway.client.delete(decodePublicId(raw.id));
    const gone = await fetch(raw.url);
    expect(gone.status).toBe(404);
    expect(gone.headers.get('content-type')).toBe('application/problem+json');
  });
});
