import { readFileSync } from 'node:fs';
import { BlockList, isIP } from 'node:net';
import { resolve } from 'node:path';
import { ConfigError, messageOf } from '@dsm/common';
import { KEY_ID_RE } from '@dsm/packets';
import { z } from 'zod';

/** Shortest cluster key secret (bytes): an HMAC-SHA-256 key should be at least its output size. */
export const MIN_SECRET_BYTES = 32;

/** An IP address, or an IPv4/IPv6 CIDR block (`10.0.0.0/8`). */
export function isIpOrCidr(s: string): boolean {
  const slash = s.indexOf('/');
  if (slash < 0) return isIP(s) !== 0;
  const ip = s.slice(0, slash);
  const bits = s.slice(slash + 1);
  const family = isIP(ip);
  if (family === 0 || !/^\d{1,3}$/.test(bits)) return false;
  return Number(bits) <= (family === 4 ? 32 : 128);
}

const keyId = z.string().regex(KEY_ID_RE, 'key ids are 1-32 of [A-Za-z0-9._-]');
const keySchema = z.union([
  z
    .object({
      id: keyId,
      secret: z
        .string()
        .refine((s) => Buffer.byteLength(s) >= MIN_SECRET_BYTES, `at least ${MIN_SECRET_BYTES} bytes`),
    })
    .strict(),
  z.object({ id: keyId, secretFile: z.string().min(1) }).strict(),
]);

/**
 * The security keys every node's config has (tracker, storage and id alike); see
 * docs/configuration.md "Node protocol security".
 */
export const nodeSecurityShape = {
  auth: z
    .object({
      /** Commands that write, delete, join, beat or reveal the layout need an authenticated connection. */
      required: z.boolean().default(false),
      /** Reads (size, download, stat, address lists) too. */
      reads: z.boolean().default(false),
      /** Cluster keys accepted; the FIRST is the one this node uses on its own outgoing connections. */
      keys: z.array(keySchema).default([]),
      /** Allows `required: false` on a non-loopback listen address. */
      allowUnauthenticated: z.boolean().default(false),
      /** A connection that has not authenticated within this time is closed (when required). */
      timeoutMs: z.number().int().min(100).max(600_000).default(10_000),
    })
    .strict()
    .prefault({}),
  /** IPs or CIDR blocks allowed to connect to the listener; empty = anyone. */
  allowFrom: z.array(z.string().refine(isIpOrCidr, 'expected an IP address or a CIDR block')).default([]),
  /** TLS: certFile + keyFile for the listener; caFile (+ servername) to verify peers on outgoing connections. */
  tls: z
    .object({
      certFile: z.string().min(1).optional(),
      keyFile: z.string().min(1).optional(),
      caFile: z.string().min(1).optional(),
      servername: z.string().min(1).optional(),
    })
    .strict()
    .prefault({}),
};

const securityObject = z.object(nodeSecurityShape);
export type NodeSecurityConfig = z.infer<typeof securityObject>;

/** A cluster key: id and secret bytes (what @dsm/client's `ClusterKey` is). */
export interface KeyMaterial {
  id: string;
  secret: Uint8Array;
}

/** What the listener enforces and what the node's own clients use. */
export interface NodeSecurity {
  required: boolean;
  reads: boolean;
  timeoutMs: number;
  /** Accepted keys by id. */
  keys: ReadonlyMap<string, Uint8Array>;
  /** The key for this node's outgoing connections (the first configured), if any. */
  ownKey?: KeyMaterial;
  /** null = anyone may connect. */
  allow: BlockList | null;
  /** PEM cert and key for a TLS listener. */
  tlsServer?: { cert: Buffer; key: Buffer };
  /** TLS for outgoing connections (present when a CA file is configured). */
  tlsClient?: { ca: Buffer; servername?: string };
}

function readSecretFile(path: string, key: string): Uint8Array {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new ConfigError(`config key "${key}": cannot read ${path}: ${messageOf(e)}`);
  }
  // one trailing newline (echo > file) is not part of the secret
  const secret = new TextEncoder().encode(text.replace(/\r?\n$/, ''));
  if (secret.length < MIN_SECRET_BYTES) {
    throw new ConfigError(
      `config key "${key}": the secret in ${path} is shorter than ${MIN_SECRET_BYTES} bytes`,
    );
  }
  return secret;
}

function readPem(path: string, key: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new ConfigError(`config key "${key}": cannot read ${path}: ${messageOf(e)}`);
  }
}

/** 127.0.0.0/8, ::1 and localhost: addresses nobody else can reach. */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost' || h === '::1') return true;
  if (h.startsWith('::ffff:')) return isLoopbackHost(h.slice(7));
  return isIP(h) === 4 && h.startsWith('127.');
}

function buildAllowList(entries: readonly string[]): BlockList | null {
  if (entries.length === 0) return null;
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

/** Whether `ip` may connect (`allow` null = anyone). */
export function addressAllowed(allow: BlockList | null, ip: string): boolean {
  if (!allow) return true;
  const family = isIP(ip);
  return family !== 0 && allow.check(ip, family === 6 ? 'ipv6' : 'ipv4');
}

/**
 * Reads the key and certificate files of a node's security config (paths relative to
 * `configDir`) and checks the rules that span keys: auth.required needs a key; a node on a
 * non-loopback address must require auth unless `auth.allowUnauthenticated`. A violation stops
 * start-up with one line naming the key.
 */
export function loadNodeSecurity(
  config: NodeSecurityConfig & { configDir?: string },
  listenHost: string,
): NodeSecurity {
  const dir = config.configDir ?? process.cwd();
  const { auth, tls } = config;
  const keys = new Map<string, Uint8Array>();
  auth.keys.forEach((k, i) => {
    if (keys.has(k.id)) throw new ConfigError(`config key "auth.keys.${i}.id": duplicate key id "${k.id}"`);
    const secret =
      'secret' in k
        ? new TextEncoder().encode(k.secret)
        : readSecretFile(resolve(dir, k.secretFile), `auth.keys.${i}.secretFile`);
    keys.set(k.id, secret);
  });
  if (auth.required && keys.size === 0) {
    throw new ConfigError('config key "auth.keys": auth.required is true but no key is configured');
  }
  if (!auth.required && !auth.allowUnauthenticated && !isLoopbackHost(listenHost)) {
    throw new ConfigError(
      `config key "auth.required": the node listens on ${listenHost}, which is not loopback, without authentication; set auth.required: true with auth.keys (or auth.allowUnauthenticated: true on a trusted network)`,
    );
  }
  if (!!tls.certFile !== !!tls.keyFile) {
    throw new ConfigError(
      `config key "tls.${tls.certFile ? 'keyFile' : 'certFile'}": a TLS listener needs both certFile and keyFile`,
    );
  }
  const first = auth.keys[0];
  return {
    required: auth.required,
    reads: auth.reads,
    timeoutMs: auth.timeoutMs,
    keys,
    ownKey: first ? { id: first.id, secret: keys.get(first.id) as Uint8Array } : undefined,
    allow: buildAllowList(config.allowFrom),
    tlsServer:
      tls.certFile && tls.keyFile
        ? {
            cert: readPem(resolve(dir, tls.certFile), 'tls.certFile'),
            key: readPem(resolve(dir, tls.keyFile), 'tls.keyFile'),
          }
        : undefined,
    tlsClient: tls.caFile
      ? { ca: readPem(resolve(dir, tls.caFile), 'tls.caFile'), servername: tls.servername }
      : undefined,
  };
}
