import { describe, expect, it } from 'vitest';
import { AUTH_NONCE_LENGTH, Command, Errno, HEADER_LENGTH, KEY_ID_WIDTH } from './constants.ts';
import { FrameReader } from './frame-reader.ts';
import { authReplySpec, REQUEST_SPECS, requestSpecs } from './frame-spec.ts';
import { encodeFrame, encodeHeader } from './header.ts';
import {
  AUTH_CLIENT_LABEL,
  AUTH_PROVE_LENGTH,
  AUTH_SERVER_LABEL,
  authTranscript,
  decodeAuthChallengeReply,
  decodeAuthProve,
  decodeAuthProveReply,
  encodeAuthChallengeReply,
  encodeAuthProve,
  encodeAuthProveReply,
} from './messages/auth.ts';

const bytes = (n: number, v: number) => new Uint8Array(n).fill(v);

describe('node-protocol auth messages', () => {
  it('AUTH_PROVE is key id (33, NUL-terminated) · client nonce (32) · proof (32) = 97 bytes', () => {
    const b = encodeAuthProve({ keyId: 'k2-2026.a', clientNonce: bytes(32, 1), proof: bytes(32, 2) });
    expect(b.length).toBe(97);
    expect(AUTH_PROVE_LENGTH).toBe(97);
    expect(new TextDecoder().decode(b.subarray(0, 9))).toBe('k2-2026.a');
    expect(b.subarray(9, KEY_ID_WIDTH).every((x) => x === 0)).toBe(true);
    expect(b.subarray(33, 65).every((x) => x === 1)).toBe(true);
    expect(b.subarray(65).every((x) => x === 2)).toBe(true);
    expect(decodeAuthProve(b)).toEqual({
      keyId: 'k2-2026.a',
      clientNonce: bytes(32, 1),
      proof: bytes(32, 2),
    });
  });

  it('refuses bad key ids, lengths and unterminated fields', () => {
    const ok = { clientNonce: bytes(32, 1), proof: bytes(32, 2) };
    for (const keyId of ['', 'x'.repeat(33), 'a b', 'ké', 'a\0b']) {
      expect(() => encodeAuthProve({ keyId, ...ok }), keyId).toThrow(/Key Id|key id/);
    }
    expect(() => encodeAuthProve({ keyId: 'k', ...ok, proof: bytes(31, 0) })).toThrow(/Proof Length/);
    expect(() => decodeAuthProve(bytes(96, 0x41))).toThrow(/Body Length: 96 != 97/);
    const noNul = bytes(97, 0x41);
    expect(() => decodeAuthProve(noNul)).toThrow(/not NUL-terminated/);
    const badId = encodeAuthProve({ keyId: 'k', ...ok });
    badId[0] = 0x20;
    expect(() => decodeAuthProve(badId)).toThrow(expect.objectContaining({ errno: Errno.BAD_FIELD }));
    expect(() => decodeAuthChallengeReply(bytes(31, 0))).toThrow(/Body Length/);
    expect(() => decodeAuthProveReply(bytes(33, 0))).toThrow(/Body Length/);
    expect(decodeAuthChallengeReply(encodeAuthChallengeReply(bytes(32, 7)))).toEqual(bytes(32, 7));
    expect(decodeAuthProveReply(encodeAuthProveReply(bytes(32, 8)))).toEqual(bytes(32, 8));
  });

  it('the transcript is label · NUL · server nonce · client nonce · key id field, distinct per label', () => {
    const c = authTranscript(AUTH_CLIENT_LABEL, bytes(32, 1), bytes(32, 2), 'main');
    const s = authTranscript(AUTH_SERVER_LABEL, bytes(32, 1), bytes(32, 2), 'main');
    const l = AUTH_CLIENT_LABEL.length;
    expect(c.length).toBe(l + 1 + 2 * AUTH_NONCE_LENGTH + KEY_ID_WIDTH);
    expect(c[l]).toBe(0);
    expect(c.subarray(l + 1, l + 33).every((x) => x === 1)).toBe(true);
    expect(c.subarray(l + 33, l + 65).every((x) => x === 2)).toBe(true);
    expect(new TextDecoder().decode(c.subarray(l + 65, l + 69))).toBe('main');
    expect(Buffer.compare(c, s)).not.toBe(0);
  });

  it('frame limits: AUTH_CHALLENGE has an empty body, AUTH_PROVE exactly 97 bytes, checked from the header', () => {
    expect(REQUEST_SPECS[Command.AUTH_CHALLENGE]).toEqual({ kind: 'buffered', min: 0, max: 0 });
    expect(REQUEST_SPECS[Command.AUTH_PROVE]).toEqual({ kind: 'buffered', min: 97, max: 97 });
    const r = new FrameReader(requestSpecs([Command.AUTH_PROVE]));
    const ev = r.push(encodeHeader({ bodyLength: 2 ** 30, command: Command.AUTH_PROVE, status: 0 }));
    expect(ev[0]).toMatchObject({ type: 'error', error: { errno: Errno.BAD_LENGTH } });
    const ok = new FrameReader(requestSpecs([Command.AUTH_CHALLENGE]));
    expect(ok.push(encodeFrame(Command.AUTH_CHALLENGE))[0]).toMatchObject({ type: 'frame' });
    // replies come with the node's own reply command; anything else is refused
    const reply = new FrameReader(authReplySpec({ kind: 'buffered', min: 32, max: 32 }));
    expect(reply.push(encodeFrame(Command.ID_REPLY, bytes(32, 0)))[0]).toMatchObject({ type: 'frame' });
    const bad = new FrameReader(authReplySpec({ kind: 'buffered', min: 32, max: 32 }));
    const e = bad.push(encodeFrame(Command.PING, bytes(32, 0)));
    expect(e[0]).toMatchObject({ type: 'error' });
    expect(HEADER_LENGTH).toBe(10);
  });
});
