import { describe, expect, it } from 'vitest';
import { concatBytes, fromBase64, fromBase64Url, fromHex, toBase64, toBase64Url, toHex } from './bytes.ts';

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
