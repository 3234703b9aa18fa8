import { createHash, timingSafeEqual } from 'node:crypto';
import { DsmError, ErrorCode } from '@dsm/common';
import { Errno } from '@dsm/packets';

/**
 * The shared `joinSecret` of joins (empty = none; when set, seed joins, which cannot carry it,
 * are refused). The seed let anyone join (quirk 1). Who may connect at all (`allowFrom`) and
 * the node-protocol auth are checked by the listener (@dsm/server), for every command.
 */
export class JoinAccess {
  readonly #secret: Buffer | null;

  constructor(joinSecret: string) {
    this.#secret = joinSecret === '' ? null : digest(joinSecret);
  }

  get secretRequired(): boolean {
    return this.#secret !== null;
  }

  /** Seed join (10): refused when a secret is configured. */
  checkSeedJoin(): void {
    if (this.#secret) {
      throw new DsmError(
        ErrorCode.UNAUTHORIZED,
        'Join Into Groups Fail, A Join Secret Is Required',
        Errno.UNAUTHORIZED,
      );
    }
  }

  /** Extension join (14): the carried secret must match (constant time). */
  checkSecret(secret: string): void {
    if (!this.#secret) return;
    if (!timingSafeEqual(digest(secret), this.#secret)) {
      throw new DsmError(ErrorCode.UNAUTHORIZED, 'Join Into Groups Fail, Invalid Secret', Errno.UNAUTHORIZED);
    }
  }
}

function digest(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest();
}
