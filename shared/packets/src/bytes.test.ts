import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  concatBytes,
  fromBase64,
  fromBase64Url,
  fromHex,
  readFixed,
  readI64,
  sameBytes,
  toBase64,
  toBase64Url,
  toHex,
  writeFixed,
  writeI64,
} from './bytes.ts';

const ascii = (s: string) => new TextEncoder().encode(s);

describe('bytes helpers (the one home for hex, base64, concat)', () => {
  it('hex round-trips and refuses odd lengths and non-hex characters', () => {
    const b = new Uint8Array([0, 1, 0x7f, 0x80, 0xfe, 0xff]);
    expect(toHex(b)).toBe('00017f80feff');
    expect(fromHex('00017F80FEFF')).toEqual(b);
    expect(() => fromHex('abc')).toThrow(/bad hex/);
    expect(() => fromHex('zz')).toThrow(/bad hex/);
  });

  it('concatBytes joins in order and always returns a fresh array', () => {
    const a = new Uint8Array([1, 2]);
    expect(concatBytes([a, new Uint8Array(0), new Uint8Array([3])])).toEqual(new Uint8Array([1, 2, 3]));
    const one = concatBytes([a]);
    expect(one).toEqual(a);
    expect(one).not.toBe(a);
  });

  // RFC 4648 §10 test vectors, plus bytes that differ between the two alphabets.
  it.each([
    ['', '', ''],
    ['f', 'Zg==', 'Zg'],
    ['fo', 'Zm8=', 'Zm8'],
    ['foo', 'Zm9v', 'Zm9v'],
    ['foobar', 'Zm9vYmFy', 'Zm9vYmFy'],
  ])('base64 of %j is %s / %s', (text, std, url) => {
    expect(toBase64(ascii(text))).toBe(std);
    expect(toBase64Url(ascii(text))).toBe(url);
    expect(fromBase64(std)).toEqual(ascii(text));
    expect(fromBase64Url(url)).toEqual(ascii(text));
  });

  it('base64url uses - and _ and no padding; both decoders refuse the other alphabet', () => {
    const b = new Uint8Array([0xfb, 0xff, 0xbf]);
    expect(toBase64(b)).toBe('+/+/');
    expect(toBase64Url(b)).toBe('-_-_');
    expect(fromBase64Url('-_-_')).toEqual(b);
    expect(() => fromBase64Url('+/+/')).toThrow(/not base64url/);
    expect(() => fromBase64Url('Zg==')).toThrow(/not base64url/);
    expect(() => fromBase64('-_-_')).toThrow(/not base64/);
    expect(() => fromBase64Url('Zm9vY')).toThrow(); // 4n+1 characters cannot encode whole bytes
  });

  it('base64 handles arrays larger than one String.fromCharCode slice', () => {
    const big = new Uint8Array(0x8000 * 2 + 5).map((_, i) => i * 7);
    expect(toHex(fromBase64Url(toBase64Url(big)))).toBe(toHex(big));
    expect(toHex(fromBase64(toBase64(big)))).toBe(toHex(big));
  });
});

describe('64-bit integers and fixed-width strings (read and written without BigInt or a temporary array)', () => {
  const asBig = (b: Uint8Array, o = 0) => new DataView(b.buffer, b.byteOffset).getBigInt64(o);
  const safe = (v: bigint) => v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER);

  it('reads every 64-bit value as DataView does, and refuses those outside the safe range', () => {
    const edges = [0n, 1n, -1n, 4294967295n, 4294967296n, -4294967296n, -4294967297n];
    const limits = [2n ** 53n - 1n, 2n ** 53n, -(2n ** 53n) + 1n, -(2n ** 53n), 2n ** 63n - 1n, -(2n ** 63n)];
    const values = [...edges, ...limits];
    for (let i = 0; i < 2000; i++) values.push(asBig(new Uint8Array(randomBytes(8))));
    for (let i = 0; i < 2000; i++) values.push(BigInt(Math.floor((Math.random() - 0.5) * 2 ** 54)));
    for (const v of values) {
      const b = new Uint8Array(11);
      new DataView(b.buffer).setBigInt64(3, v);
      if (safe(v)) expect(readI64(b, 3, 'x')).toBe(Number(v));
      else expect(() => readI64(b, 3, 'x'), String(v)).toThrow(/x out of range/);
    }
    expect(() => readI64(new Uint8Array(7), 0, 'x')).toThrow(RangeError);
  });

  it('writes every safe integer as DataView does, and refuses the rest', () => {
    const values = [
      0,
      1,
      -1,
      2 ** 32 - 1,
      2 ** 32,
      -(2 ** 32),
      Number.MAX_SAFE_INTEGER,
      Number.MIN_SAFE_INTEGER,
    ];
    for (let i = 0; i < 2000; i++)
      values.push(Math.floor((Math.random() - 0.5) * 2 * Number.MAX_SAFE_INTEGER));
    for (const v of values) {
      const b = new Uint8Array(10).fill(0xaa);
      writeI64(b, 1, v);
      expect(asBig(b, 1)).toBe(BigInt(v));
      expect([b[0], b[9]]).toEqual([0xaa, 0xaa]);
    }
    for (const bad of [2 ** 53, -(2 ** 53), 1.5, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(() => writeI64(new Uint8Array(8), 0, bad)).toThrow(/not a safe integer/);
    }
  });

  it('round-trips ASCII, multi-byte and long strings; refuses too long (in bytes) and NUL', () => {
    const enc = new TextEncoder();
    for (const v of [
      '',
      'a',
      'tnv001',
      'ü',
      '日本語',
      '😀x',
      'a'.repeat(15),
      'é'.repeat(7),
      'x'.repeat(100),
    ]) {
      const width = 128;
      const b = new Uint8Array(width + 4).fill(0xee);
      writeFixed(b, 2, width, v, 'F');
      const bytes = enc.encode(v);
      expect(b.subarray(2, 2 + bytes.length)).toEqual(bytes);
      expect(b.subarray(2 + bytes.length, 2 + width).every((x) => x === 0)).toBe(true);
      expect([b[0], b[1], b[width + 2], b[width + 3]]).toEqual([0xee, 0xee, 0xee, 0xee]);
      expect(readFixed(b, 2, width, 'F')).toBe(v);
    }
    // the width counts bytes, with the NUL: 15 ASCII fit in 16, 8 two-byte characters do not
    writeFixed(new Uint8Array(16), 0, 16, 'a'.repeat(15), 'APPID');
    expect(() => writeFixed(new Uint8Array(16), 0, 16, 'a'.repeat(16), 'APPID')).toThrow(
      'APPID too long: 16 bytes > 15',
    );
    expect(() => writeFixed(new Uint8Array(16), 0, 16, 'é'.repeat(8), 'APPID')).toThrow(
      'APPID too long: 16 bytes > 15',
    );
    expect(() => writeFixed(new Uint8Array(16), 0, 16, 'a\u0000b', 'APPID')).toThrow(/NUL/);
    // a lone surrogate is written as U+FFFD (as TextEncoder.encode does) and read back so
    const b = new Uint8Array(16);
    writeFixed(b, 0, 16, 'a\ud800', 'F');
    expect(readFixed(b, 0, 16, 'F')).toBe('a\ufffd');
    // bytes that are not UTF-8 read as U+FFFD; a field without its NUL is refused
    expect(readFixed(new Uint8Array([0x61, 0xff, 0]), 0, 3, 'F')).toBe('a\ufffd');
    expect(() => readFixed(new Uint8Array([0x61, 0x62]), 0, 2, 'F')).toThrow(/not NUL-terminated/);
  });
});

describe('sameBytes', () => {
  it('is true only for equal lengths and equal bytes, wherever they differ', () => {
    const a = new Uint8Array([1, 2, 3, 4]);
    expect(sameBytes(a, new Uint8Array([1, 2, 3, 4]))).toBe(true);
    expect(sameBytes(new Uint8Array(0), new Uint8Array(0))).toBe(true);
    expect(sameBytes(a, new Uint8Array([1, 2, 3]))).toBe(false);
    for (let i = 0; i < 4; i++) {
      const b = a.slice();
      b[i] = (b[i] as number) ^ 0x80;
      expect(sameBytes(a, b)).toBe(false);
    }
  });
});
