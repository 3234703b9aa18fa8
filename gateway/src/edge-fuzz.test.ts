import { decodePublicId, encodePublicId } from '@dsm/client';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { clientKey } from './edge-limits.ts';
import { parseRange } from './http-semantics.ts';
import { typeForName } from './mime.ts';
import { DEFAULT_MULTIPART_LIMITS, MultipartReader } from './multipart.ts';
import { toProblem } from './problem.ts';

// Property tests of the parsers that read untrusted bytes: whatever comes in, the answer is a
// result or a client-error problem (4xx), never an exception that would be a 500.

const enc = new TextEncoder();

/** Yields `bytes` cut at the given positions (sorted, deduplicated by the caller's values). */
async function* chunked(bytes: Uint8Array, cuts: number[]): AsyncGenerator<Uint8Array> {
  let at = 0;
  for (const c of [...new Set(cuts.map((x) => x % (bytes.length + 1)))].sort((a, b) => a - b)) {
    if (c > at) {
      yield bytes.slice(at, c);
      at = c;
    }
  }
  if (at < bytes.length) yield bytes.slice(at);
}

interface Parsed {
  fields: [string, string][];
  file?: { name: string; bytes: number[] };
}

async function parseAll(src: AsyncIterable<Uint8Array>, boundary: string): Promise<Parsed> {
  const r = new MultipartReader(src, boundary, { maxParts: 64, maxPartHeaderBytes: 4096 });
  const out: Parsed = { fields: [] };
  for (let part = await r.next(); part; part = await r.next()) {
    if (part.filename !== undefined) {
      const bytes: number[] = [];
      for await (const c of part.body) bytes.push(...c);
      out.file = { name: part.filename, bytes };
    } else out.fields.push([part.name, await MultipartReader.text(part, 1 << 20)]);
  }
  return out;
}

/** Only client errors may come out of a parser fed by a request. */
function expectClientError(e: unknown) {
  const p = toProblem(e);
  expect(p.status, String(e)).toBeGreaterThanOrEqual(400);
  expect(p.status, String(e)).toBeLessThan(500);
}

const BCHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'()+_,-./:=?";
const boundaryArb = fc
  .array(fc.constantFrom(...BCHARS), { minLength: 1, maxLength: 70 })
  .map((a) => a.join(''))
  .filter((b) => !b.endsWith(' '));
const fieldName = fc
  .string({ unit: 'grapheme-ascii', minLength: 1, maxLength: 20 })
  .filter((s) => !/["\\\r\n;]/.test(s));
const cutsArb = fc.array(fc.nat(4000), { maxLength: 30 });

describe('multipart parser (fast-check)', () => {
  it('parses any valid form, however it is chunked and whatever its boundary', async () => {
    await fc.assert(
      fc.asyncProperty(
        boundaryArb,
        fc.array(fc.tuple(fieldName, fc.string({ maxLength: 40 })), { maxLength: 6 }),
        fc.uint8Array({ maxLength: 600 }),
        cutsArb,
        async (boundary, fields, file, cuts) => {
          const delim = enc.encode(`\r\n--${boundary}`);
          // a body that happens to contain the delimiter cannot be sent in this boundary
          const hay = Buffer.from(file);
          fc.pre(!hay.includes(Buffer.from(delim)) && !fields.some(([, v]) => v.includes(`--${boundary}`)));
          const parts: Uint8Array[] = [];
          for (const [n, v] of fields) {
            parts.push(
              enc.encode(`--${boundary}\r\nContent-Disposition: form-data; name="${n}"\r\n\r\n${v}\r\n`),
            );
          }
          parts.push(
            enc.encode(
              `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="f.bin"\r\n` +
                'Content-Type: application/octet-stream\r\n\r\n',
            ),
            file,
            enc.encode(`\r\n--${boundary}--\r\n`),
          );
          const body = Buffer.concat(parts);
          const got = await parseAll(chunked(body, cuts), boundary);
          expect(got.fields).toEqual(fields);
          expect(got.file).toEqual({ name: 'f.bin', bytes: [...file] });
        },
      ),
      { numRuns: 300 },
    );
  });

  it('answers garbage (random bytes, cut forms, random boundaries) with a 4xx problem or a result', async () => {
    const form = (b: string) =>
      `--${b}\r\nContent-Disposition: form-data; name="a"\r\n\r\nx\r\n--${b}\r\n` +
      `Content-Disposition: form-data; name="file"; filename="z"\r\n\r\nhello\r\n--${b}--\r\n`;
    await fc.assert(
      fc.asyncProperty(
        boundaryArb,
        fc.oneof(
          fc.uint8Array({ maxLength: 2000 }),
          // a valid form, cut short or with bytes flipped
          fc
            .tuple(boundaryArb, fc.nat(400), fc.array(fc.tuple(fc.nat(400), fc.nat(255)), { maxLength: 5 }))
            .map(([b, cut, flips]) => {
              const bytes = enc.encode(form(b)).slice(0, cut);
              for (const [i, v] of flips) if (i < bytes.length) bytes[i] = v;
              return bytes;
            }),
        ),
        cutsArb,
        async (boundary, bytes, cuts) => {
          try {
            await parseAll(chunked(bytes, cuts), boundary);
          } catch (e) {
            expectClientError(e);
          }
        },
      ),
      { numRuns: 500 },
    );
  });

  it('refuses too many parts and oversized part headers with 413, before reading them whole', async () => {
    const b = 'B';
    const many = `--${b}\r\nContent-Disposition: form-data; name="x"\r\n\r\n\r\n`.repeat(100);
    await expect(parseAll(chunked(enc.encode(many), [7, 100]), b)).rejects.toMatchObject({ status: 413 });
    const longHeader = `--${b}\r\nContent-Disposition: form-data; name="${'n'.repeat(10_000)}"\r\n\r\n\r\n--${b}--`;
    const r = new MultipartReader(chunked(enc.encode(longHeader), [5000]), b, DEFAULT_MULTIPART_LIMITS);
    await expect(r.next()).rejects.toMatchObject({ status: 413 });
  });
});

describe('public id decoder (fast-check)', () => {
  it('decodes what it encodes', () => {
    const app = fc
      .string({ unit: 'grapheme-ascii', minLength: 1, maxLength: 15 })
      .filter((s) => !s.includes('\0'));
    const user = fc.string({ unit: 'grapheme', maxLength: 60 }).filter((s) => !s.includes('\0'));
    const file = fc
      .string({ unit: 'grapheme-ascii', minLength: 1, maxLength: 127 })
      .filter((s) => !s.includes('\0'));
    fc.assert(
      fc.property(app, user, file, (appId, userId, fileId) => {
        fc.pre(enc.encode(userId).length < 256);
        expect(decodePublicId(encodePublicId({ appId, userId, fileId }))).toEqual({ appId, userId, fileId });
      }),
    );
  });

  it('answers any other string with BAD_INPUT (a 400), never another error', () => {
    const b64 = fc.uint8Array({ maxLength: 500 }).map((b) => Buffer.from(b).toString('base64url'));
    // well-formed lengths with fields past the protocol's widths or bad UTF-8
    const crafted = fc
      .tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.uint8Array({ maxLength: 600 }))
      .map(([a, u, f, rest]) =>
        Buffer.concat([
          Buffer.from([1, a]),
          Buffer.from(rest.slice(0, a)),
          Buffer.from([u]),
          Buffer.from(rest.slice(a, a + u)),
          Buffer.from([f]),
          Buffer.from(rest.slice(a + u, a + u + f)),
        ]).toString('base64url'),
      );
    fc.assert(
      fc.property(fc.oneof(fc.string({ maxLength: 1200 }), b64, crafted), (s) => {
        try {
          const ids = decodePublicId(s);
          // whatever decodes is within the protocol's fields
          expect(enc.encode(ids.appId).length).toBeLessThan(16);
          expect(enc.encode(ids.userId).length).toBeLessThan(256);
          expect(enc.encode(ids.fileId).length).toBeLessThan(128);
          expect(encodePublicId(ids)).toBe(s);
        } catch (e) {
          expect((e as { code?: string }).code).toBe('DSM_ERR_BAD_INPUT');
          expect(toProblem(e).status).toBe(400);
        }
      }),
      { numRuns: 2000 },
    );
    // an app id longer than the protocol allows, or a NUL, or a non-canonical spelling
    const long = Buffer.concat([Buffer.from([1, 20]), Buffer.alloc(20, 97), Buffer.from([1, 97, 1, 98])]);
    expect(() => decodePublicId(long.toString('base64url'))).toThrow(/not a dsm file id/);
    const ok = encodePublicId({ appId: 'a', userId: 'b', fileId: 'c' });
    expect(() => decodePublicId(`${ok}A`)).toThrow(/not a dsm file id/);
  });
});

describe('Range parser (fast-check)', () => {
  it('never throws, and any range it gives lies inside the file', () => {
    const header = fc.oneof(
      fc.string({ maxLength: 80 }),
      fc
        .array(
          fc.tuple(
            fc.option(fc.bigInt({ min: 0n, max: 10n ** 20n })),
            fc.option(fc.bigInt({ min: 0n, max: 10n ** 20n })),
          ),
          { minLength: 1, maxLength: 4 },
        )
        .map((specs) => `bytes=${specs.map(([a, b]) => `${a ?? ''}-${b ?? ''}`).join(',')}`),
    );
    fc.assert(
      fc.property(header, fc.nat(1 << 30), (h, size) => {
        const r = parseRange(h, size);
        if (r.kind === 'range') {
          expect(r.start).toBeGreaterThanOrEqual(0);
          expect(r.end).toBeGreaterThanOrEqual(r.start);
          expect(r.end).toBeLessThan(size);
        }
      }),
      { numRuns: 3000 },
    );
  });
});

describe('lookups by request strings', () => {
  it('finds no type for prototype keys as file extensions', () => {
    for (const ext of ['constructor', '__proto__', 'toString', 'hasOwnProperty', 'valueOf']) {
      expect(typeForName(`movie.${ext}`)).toBeUndefined();
    }
    expect(typeForName('movie.MP4')).toBe('video/mp4');
  });
});

describe('client keys of the per-address caps', () => {
  it('counts IPv4 as is (mapped too) and IPv6 by its /64', () => {
    expect(clientKey('127.0.0.1')).toBe('127.0.0.1');
    expect(clientKey('::ffff:10.1.2.3')).toBe('10.1.2.3');
    expect(clientKey('2001:db8:1:2:aaaa::1')).toBe('2001:db8:1:2::/64');
    expect(clientKey('2001:db8:1:2:bbbb:cccc:dddd:eeee')).toBe('2001:db8:1:2::/64');
    expect(clientKey('2001:db8::1')).toBe('2001:db8:0:0::/64');
    expect(clientKey('::1')).toBe('0:0:0:0::/64');
    expect(clientKey('fe80::1%eth0')).toBe('fe80:0:0:0::/64');
    expect(clientKey('2001:0db8:0001:0002::9')).toBe('2001:db8:1:2::/64');
  });
});
