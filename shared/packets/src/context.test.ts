import { describe, expect, it } from 'vitest';
import { Command, Errno, REQUEST_ID_MAX } from './constants.ts';
import { REQUEST_SPECS } from './frame-spec.ts';
import { decodeRequestContext, encodeRequestContext, isRequestId } from './messages/context.ts';

describe('request context (4)', () => {
  it('carries a request id as its bytes, 1-64 of [A-Za-z0-9_.-]', () => {
    const uuid = '0f8b2c1e-9a4d-4c6b-8f3e-2d1a0b9c8e7f';
    expect(new TextDecoder().decode(encodeRequestContext(uuid))).toBe(uuid);
    expect(decodeRequestContext(encodeRequestContext(uuid))).toBe(uuid);
    expect(decodeRequestContext(encodeRequestContext('x'.repeat(REQUEST_ID_MAX)))).toBe('x'.repeat(64));
    expect(REQUEST_SPECS[Command.REQUEST_CONTEXT]).toEqual({ kind: 'buffered', min: 1, max: 64 });
  });

  it('refuses what is not a request id, both ways', () => {
    for (const bad of ['', 'a b', 'x'.repeat(65), 'ü', 'a\u0000b', 'a/b', 'line\nbreak']) {
      expect(isRequestId(bad), JSON.stringify(bad)).toBe(false);
      expect(() => encodeRequestContext(bad)).toThrow(/Invalid Request Id/);
      const b = new TextEncoder().encode(bad);
      expect(() => decodeRequestContext(b)).toThrow(expect.objectContaining({ errno: Errno.BAD_FIELD }));
    }
    // bytes that are not UTF-8 at all
    expect(() => decodeRequestContext(new Uint8Array([0xff, 0xfe]))).toThrow(/Invalid Request Id/);
  });
});
