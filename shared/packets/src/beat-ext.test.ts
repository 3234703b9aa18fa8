import { describe, expect, it } from 'vitest';
import { Command } from './constants.ts';
import { ProtocolError } from './errors.ts';
import { REQUEST_SPECS } from './frame-spec.ts';
import {
  BEAT_EXT_LENGTH,
  BEAT_EXT_V1_LENGTH,
  type BeatExt,
  decodeBeatExt,
  encodeBeatExt,
  STORE_FLAG_NOT_WRITABLE,
} from './messages/tracker.ts';

const beat: BeatExt = {
  group: 'group001',
  hostname: 's3',
  port: 23000,
  totalBytes: 1000,
  freeBytes: 400,
  load: 2,
  pendingHeals: 7,
  writable: false,
};

describe('heartbeat extension (15): store flags', () => {
  it('carries "not writable" in bit 0 of byte 172', () => {
    const b = encodeBeatExt(beat);
    expect(b.length).toBe(BEAT_EXT_LENGTH);
    expect(b[172]).toBe(STORE_FLAG_NOT_WRITABLE);
    expect(decodeBeatExt(b)).toEqual(beat);
    const ok = encodeBeatExt({ ...beat, writable: true });
    expect(ok[172]).toBe(0);
    expect(decodeBeatExt(ok).writable).toBe(true);
  });

  it("reads the first version's 172-byte body as writable", () => {
    const v1 = encodeBeatExt(beat).subarray(0, BEAT_EXT_V1_LENGTH);
    expect(decodeBeatExt(v1)).toEqual({ ...beat, writable: true });
  });

  it('refuses any other length, in the decoder and before reading the body', () => {
    for (const n of [BEAT_EXT_V1_LENGTH - 1, BEAT_EXT_LENGTH + 1]) {
      expect(() => decodeBeatExt(new Uint8Array(n))).toThrow(ProtocolError);
    }
    expect(REQUEST_SPECS[Command.TRACKER_BEAT_EXT]).toEqual({
      kind: 'buffered',
      min: BEAT_EXT_V1_LENGTH,
      max: BEAT_EXT_LENGTH,
    });
  });
});
