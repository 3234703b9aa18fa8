import { describe, expect, it } from 'vitest';
import { DsmError, ErrorCode, errorCodeOf, GatewayErrorCode, isDsmError, messageOf } from './errors.ts';

class SubError extends DsmError {}

describe('isDsmError', () => {
  it('is true for a DsmError (and subclasses), false for anything else', () => {
    expect(isDsmError(new DsmError(ErrorCode.IO, 'x'))).toBe(true);
    expect(isDsmError(new SubError(GatewayErrorCode.LOCKED, 'x'))).toBe(true);
    for (const other of [
      new Error('x'),
      { code: ErrorCode.IO, errno: 5 },
      null,
      undefined,
      'DSM_ERR_IO',
      0,
    ]) {
      expect(isDsmError(other), String(other)).toBe(false);
      expect(isDsmError(other, ErrorCode.IO), String(other)).toBe(false);
    }
  });

  it('with codes, is true only when the code is one of them, and narrows the code', () => {
    const e: unknown = new DsmError(ErrorCode.SOCKET, 'reset');
    expect(isDsmError(e, ErrorCode.SOCKET)).toBe(true);
    expect(isDsmError(e, ErrorCode.CONNECT, ErrorCode.SOCKET)).toBe(true);
    expect(isDsmError(e, ErrorCode.CONNECT)).toBe(false);
    if (isDsmError(e, ErrorCode.CONNECT, ErrorCode.SOCKET)) {
      const code: 'DSM_ERR_CONNECT' | 'DSM_ERR_SOCKET' = e.code;
      expect(code).toBe('DSM_ERR_SOCKET');
    }
  });

  it('admits the codes of both tables and no other (checked by tsc)', () => {
    expect(new DsmError(GatewayErrorCode.CLUSTER_AUTH, 'x').code).toBe('DSM_ERR_CLUSTER_AUTH');
    // @ts-expect-error a code in neither table does not compile
    expect(new DsmError('DSM_ERR_TYPO', 'x').code).toBe('DSM_ERR_TYPO');
    // @ts-expect-error nor does comparing against one
    expect(isDsmError(new DsmError(ErrorCode.IO, 'x'), 'DSM_ERR_IOO')).toBe(false);
  });

  it('the two tables share no code and every code is DSM_ERR_…', () => {
    const all = [...Object.values(ErrorCode), ...Object.values(GatewayErrorCode)];
    expect(new Set(all).size).toBe(all.length);
    for (const c of all) expect(c).toMatch(/^DSM_ERR_[A-Z_]+$/);
  });
});

describe('messageOf', () => {
  it('is the message of an Error and the text of anything else', () => {
    expect(messageOf(new Error('boom'))).toBe('boom');
    expect(messageOf(new DsmError(ErrorCode.IO, 'disk'))).toBe('disk');
    expect(messageOf('plain')).toBe('plain');
    expect(messageOf(undefined)).toBe('undefined');
    expect(messageOf(42)).toBe('42');
  });
});

describe('errorCodeOf', () => {
  it('is the string code of a system, driver or dsm error, undefined for anything else', () => {
    expect(errorCodeOf(Object.assign(new Error('x'), { code: 'ENOENT', syscall: 'open' }))).toBe('ENOENT');
    expect(errorCodeOf({ code: 'SQLITE_BUSY' })).toBe('SQLITE_BUSY');
    expect(errorCodeOf(new DsmError(ErrorCode.IO, 'x'))).toBe('DSM_ERR_IO');
    for (const other of [new Error('x'), { code: 1062 }, null, undefined, 'ENOENT', 5]) {
      expect(errorCodeOf(other), String(other)).toBeUndefined();
    }
  });
});
