import { createHash, timingSafeEqual } from 'node:crypto';
import { BlockList, isIP } from 'node:net';
import { DsmError, ErrorCode } from '@dsm/common';
import { Errno } from '@dsm/packets';

/**
 * Who may join and beat: `allowFrom` (IPs / CIDR blocks; empty = anyone) and the shared
 * `joinSecret` (empty = none; when set, seed joins, which cannot carry it, are refused).
 * The seed let anyone join (quirk 1).
 */
export class JoinAccess {
  readonly #allow: BlockList | null;
  readonly #secret: Buffer | null;

  constructor(allowFrom: readonly string[], joinSecret: string) {
    this.#allow = allowFrom.length > 0 ? buildList(allowFrom) : null;
    this.#secret = joinSecret === '' ? null : digest(joinSecret);
  }

  get secretRequired(): boolean {
    return this.#secret !== null;
  }

  /** Throws UNAUTHORIZED when `ip` may not join or beat. */
  checkPeer(ip: string): void {
    if (!this.#allow) return;
    const family = isIP(ip);
    const ok = family !== 0 && this.#allow.check(ip, family === 6 ? 'ipv6' : 'ipv4');
    if (!ok) throw new DsmError(ErrorCode.UNAUTHORIZED, `Address Not Allowed: ${ip}`, Errno.UNAUTHORIZED);
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

function buildList(entries: readonly string[]): BlockList {
  const list = new BlockList();
  for (const e of entries) {
    const slash = e.indexOf('/');
    const ip = slash < 0 ? e : e.slice(0, slash);
    const type = isIP(ip) === 6 ? 'ipv6' : 'ipv4';
    if (slash < 0) list.addAddress(ip, type);
    else list.addSubnet(ip, Number(e.slice(slash + 1)), type);
  }
  return list;
}
