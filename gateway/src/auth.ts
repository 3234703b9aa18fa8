import { messageOf } from '@dsm/common/errors';
import { fromBase64Url, toBase64Url } from '@dsm/packets';
import {
  createRemoteJWKSet,
  type FlattenedJWSInput,
  type JWTHeaderParameters,
  type JWTPayload,
  errors as joseErrors,
  jwtVerify,
  SignJWT,
} from 'jose';
import { type GatewayConfig, hs256KeySet, LEGACY_HS256_KID } from './config.ts';
import { utf8 } from './encoding.ts';
import { forbidden, unauthorized } from './problem.ts';

/** Who is uploading (or deleting): the app id and user id of the dsm file ids. */
export interface Principal {
  appId: string;
  userId: string;
}

const CHALLENGE = 'Bearer realm="dsm"';

/** What the caller wants to do: uploads may be anonymous where configured, deletes never. */
export type Action = 'upload' | 'delete';

/**
 * Verifies bearer tokens: HS256 with a key set (the token's `kid` header names the key; a token
 * without `kid` is checked against the legacy `hs256Secret` only) and/or any JWKS algorithm. The
 * token must carry `app` (the dsm app id) and `sub` (the user id); `exp` unless `requireExp` is
 * off.
 */
export class TokenVerifier {
  readonly #cfg: GatewayConfig['auth'];
  /** HS256 keys by key id (a Map: a `kid` from a token never walks a prototype). */
  readonly #keys: Map<string, Uint8Array<ArrayBuffer>>;
  readonly #jwks: ReturnType<typeof createRemoteJWKSet> | null;

  constructor(cfg: GatewayConfig['auth']) {
    this.#cfg = cfg;
    this.#keys = new Map(Object.entries(hs256KeySet(cfg)).map(([kid, secret]) => [kid, utf8(secret)]));
    this.#jwks = cfg.jwksUrl ? createRemoteJWKSet(new URL(cfg.jwksUrl)) : null;
  }

  /**
   * The caller of a request, from its Authorization header. Without a token: the configured
   * default identity for an upload in mode `none` or with `allowAnonymousUploads`; otherwise 401.
   * A delete always needs a token (mode `none` has none to check: 403).
   */
  async principal(authorization: string | undefined, action: Action = 'upload'): Promise<Principal> {
    const anonymous = { appId: this.#cfg.defaultApp, userId: this.#cfg.defaultUser };
    if (this.#cfg.mode === 'none') {
      if (action === 'delete') {
        throw forbidden(
          'deletes over HTTP need auth.mode "jwt" (this gateway accepts anonymous uploads only)',
        );
      }
      return anonymous;
    }
    if (!authorization) {
      if (action === 'upload' && this.#cfg.allowAnonymousUploads) return anonymous;
      throw unauthorized('a bearer token is required', 'missing', CHALLENGE);
    }
    const m = /^Bearer\s+([A-Za-z0-9_\-.]+)\s*$/i.exec(authorization);
    if (!m) throw unauthorized('the Authorization header is not a bearer token', 'invalid', CHALLENGE);
    const payload = await this.verify(m[1] as string);
    const appId = payload.app;
    const userId = payload.sub;
    if (typeof appId !== 'string' || appId.length === 0 || utf8(appId).length > 15) {
      throw unauthorized('the token has no valid "app" claim (1..15 bytes)', 'invalid', CHALLENGE);
    }
    if (typeof userId !== 'string' || utf8(userId).length > 255) {
      throw unauthorized('the token has no valid "sub" claim (at most 255 bytes)', 'invalid', CHALLENGE);
    }
    return { appId, userId };
  }

  /** The HS256 key a token's header names; unknown or missing `kid` (without a legacy key) is refused. */
  #hsKey(header: JWTHeaderParameters): Uint8Array<ArrayBuffer> {
    const kid = header.kid ?? (this.#cfg.hs256Secret ? LEGACY_HS256_KID : undefined);
    const key = kid === undefined ? undefined : this.#keys.get(kid);
    if (!key) throw new Error(kid === undefined ? 'the token names no key (kid)' : 'unknown key id (kid)');
    return key;
  }

  async verify(token: string): Promise<JWTPayload> {
    const opts = {
      issuer: this.#cfg.issuer,
      audience: this.#cfg.audience,
      clockTolerance: this.#cfg.clockToleranceSec,
      requiredClaims: this.#cfg.requireExp ? ['exp'] : [],
    };
    const jwks = this.#jwks;
    const hs = this.#keys.size > 0;
    try {
      const r = await jwtVerify(
        token,
        async (header: JWTHeaderParameters, input: FlattenedJWSInput) => {
          if (header.alg === 'HS256') {
            if (!hs) throw new Error('HS256 tokens are not accepted here');
            return this.#hsKey(header);
          }
          if (!jwks) throw new Error(`algorithm ${header.alg} is not accepted here`);
          return jwks(header, input);
        },
        opts,
      );
      return r.payload;
    } catch (e) {
      if (e instanceof joseErrors.JWTExpired)
        throw unauthorized('the token has expired', 'expired', CHALLENGE);
      throw unauthorized(`the token is not valid: ${messageOf(e)}`, 'invalid', CHALLENGE);
    }
  }
}

/**
 * The caller may act on files of (appId, userId) only when the token names exactly them. In
 * mode `none` everyone is the default identity, so only reads of one's own tus uploads pass
 * (deletes were refused by `principal(…, 'delete')` already).
 */
export function requireOwner(
  p: Principal,
  ids: { appId: string; userId: string },
  _mode: 'none' | 'jwt',
): void {
  if (p.appId !== ids.appId || p.userId !== ids.userId) {
    throw forbidden('the token does not belong to the owner of this file');
  }
}

/** Mints an HS256 token (the `dsm token` command, tests); `kid` names the key in the header. */
export async function mintToken(o: {
  secret: string;
  kid?: string;
  app: string;
  sub: string;
  ttlSec?: number;
  issuer?: string;
  audience?: string;
}): Promise<string> {
  let jwt = new SignJWT({ app: o.app })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT', ...(o.kid ? { kid: o.kid } : {}) })
    .setSubject(o.sub)
    .setIssuedAt()
    .setExpirationTime(Math.floor(Date.now() / 1000) + (o.ttlSec ?? 3600));
  if (o.issuer) jwt = jwt.setIssuer(o.issuer);
  if (o.audience) jwt = jwt.setAudience(o.audience);
  return jwt.sign(utf8(o.secret));
}

// ---------------------------------------------------------------------------------------------
// Signed URLs: `?exp=<unix seconds>&kid=<key id>&sig=<base64url HMAC-SHA256(key, path "\n" exp)>`.
// The path is the URL path exactly as requested (percent-encoded form), so a signature is valid
// for one resource; the key id lets several secrets be live while one is rotated out.
// ---------------------------------------------------------------------------------------------

const hmacKeys = new Map<string, Promise<CryptoKey>>();

function hmacKey(secret: string): Promise<CryptoKey> {
  let k = hmacKeys.get(secret);
  if (!k) {
    k = crypto.subtle.importKey('raw', utf8(secret), { name: 'HMAC', hash: 'SHA-256' }, false, [
      'sign',
      'verify',
    ]);
    hmacKeys.set(secret, k);
  }
  return k;
}

const signedMessage = (path: string, exp: number) => utf8(`${path}\n${exp}`);

export async function signPath(path: string, exp: number, secret: string): Promise<string> {
  const sig = await crypto.subtle.sign('HMAC', await hmacKey(secret), signedMessage(path, exp));
  return toBase64Url(new Uint8Array(sig));
}

/**
 * Appends `exp`, `kid` and `sig` to a URL (absolute or a path). With `maxLifetimeSec` (the
 * gateway's `downloads.maxSignedUrlLifetimeSec`), a URL that would live longer is refused.
 */
export async function signUrl(
  url: string,
  o: { kid: string; secret: string; expiresInSec?: number; exp?: number; maxLifetimeSec?: number },
): Promise<string> {
  const u = new URL(url, 'http://x');
  const now = Math.floor(Date.now() / 1000);
  const exp = o.exp ?? now + (o.expiresInSec ?? 3600);
  if (o.maxLifetimeSec !== undefined && exp - now > o.maxLifetimeSec) {
    throw new RangeError(
      `a signed URL may live at most ${o.maxLifetimeSec} s (downloads.maxSignedUrlLifetimeSec); asked for ${exp - now} s`,
    );
  }
  const sig = await signPath(u.pathname, exp, o.secret);
  u.searchParams.set('exp', String(exp));
  u.searchParams.set('kid', o.kid);
  u.searchParams.set('sig', sig);
  return /^[a-z][a-z0-9+.-]*:/i.test(url) ? u.toString() : `${u.pathname}${u.search}`;
}

/**
 * Checks a signed URL. HMAC verification through WebCrypto `verify`, which compares in
 * constant time; a missing, unknown-key, malformed, tampered or expired signature is refused,
 * and so is one whose `exp` lies more than `maxLifetimeSec` ahead (a URL signed to live for
 * years is refused until its last `maxLifetimeSec`: the signature holds no issue time).
 */
export async function verifySignedUrl(
  path: string,
  q: { exp?: string; kid?: string; sig?: string },
  keys: Record<string, string>,
  defaultKid: string | undefined,
  nowSec = Math.floor(Date.now() / 1000),
  maxLifetimeSec = Number.POSITIVE_INFINITY,
): Promise<void> {
  if (!q.sig || !q.exp) throw unauthorized('this file needs a signed URL (exp, sig)', 'missing');
  const kid = q.kid ?? defaultKid;
  // own keys only: `?kid=constructor` must not find Object.prototype's
  const secret = kid === undefined || !Object.hasOwn(keys, kid) ? undefined : keys[kid];
  if (secret === undefined) throw unauthorized('unknown signing key id', 'invalid');
  if (!/^\d{1,12}$/.test(q.exp)) throw unauthorized('bad exp in the signed URL', 'invalid');
  let sig: Uint8Array<ArrayBuffer>;
  try {
    sig = fromBase64Url(q.sig);
  } catch {
    throw unauthorized('bad sig in the signed URL', 'invalid');
  }
  const exp = Number(q.exp);
  const ok = await crypto.subtle.verify('HMAC', await hmacKey(secret), sig, signedMessage(path, exp));
  if (!ok) throw unauthorized('the URL signature does not match', 'invalid');
  // Checked after the MAC, so an attacker learns nothing about validity from the expiry reply.
  if (nowSec > exp) throw unauthorized('the signed URL has expired', 'expired');
  if (exp - nowSec > maxLifetimeSec) {
    throw unauthorized(
      `the signed URL lives longer than the gateway allows (${maxLifetimeSec} s)`,
      'invalid',
    );
  }
}
