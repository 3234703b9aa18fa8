import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { type ClusterKey, clusterKey } from '@dsm/client';
import { messageOf } from '@dsm/common';
import { type Address, parseAddress } from '@dsm/packets';

export interface ClientSettings {
  trackers: Address[];
  appId: string;
  userId: string;
  /** Node-protocol key (clusters whose nodes have auth.required). */
  auth?: ClusterKey;
  /** PEM of the authority of the nodes' TLS certificates: connect with TLS. */
  tlsCa?: string;
}

export interface KeyFlags {
  'key-file'?: string;
  'key-id'?: string;
  'tls-ca'?: string;
}

/**
 * The cluster key of client verbs. The secret never comes from the command line (it would show
 * in `ps` and shell history): `--key-file FILE` or `$DSM_KEY_FILE` (a file holding it), else
 * `$DSM_CLUSTER_KEY` (the secret itself). Its id: `--key-id`, `$DSM_KEY_ID`, default "main".
 * None of them = no auth (a local `dsm up` cluster).
 */
export function clusterKeyFrom(
  flags: KeyFlags,
  env: Record<string, string | undefined> = process.env,
): ClusterKey | undefined {
  const id = flags['key-id'] ?? env.DSM_KEY_ID ?? 'main';
  const file = flags['key-file'] ?? env.DSM_KEY_FILE;
  if (file) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (e) {
      throw new UsageError(`cannot read the key file ${file}: ${messageOf(e)}`);
    }
    return clusterKey(id, text, `key file ${file}`);
  }
  if (env.DSM_CLUSTER_KEY) return clusterKey(id, env.DSM_CLUSTER_KEY, 'DSM_CLUSTER_KEY');
  return undefined;
}

/**
 * Where client verbs find the cluster, first match wins: flags, environment (DSM_TRACKERS,
 * DSM_APP, DSM_USER), the cluster.json that `dsm up` writes (in DSM_HOME or ./.dsm/cluster),
 * then the seed's defaults (tracker 127.0.0.1:21000, app tnvideo, user tnv001).
 */
export function clientSettings(
  flags: { trackers?: string; app?: string; user?: string } & KeyFlags,
): ClientSettings {
  const env = process.env;
  let trackersText = flags.trackers ?? env.DSM_TRACKERS;
  if (!trackersText) {
    const file = join(env.DSM_HOME ?? join(process.cwd(), '.dsm', 'cluster'), 'cluster.json');
    if (existsSync(file)) {
      try {
        const c = JSON.parse(readFileSync(file, 'utf8')) as { trackers?: string[] };
        if (c.trackers?.length) trackersText = c.trackers.join(';');
      } catch {
        // an unreadable cluster.json falls through to the defaults
      }
    }
  }
  const trackers = (trackersText ?? '127.0.0.1:21000')
    .split(/[;,]/)
    .filter((s) => s.trim())
    .map(parseAddress);
  return {
    trackers,
    appId: flags.app ?? env.DSM_APP ?? 'tnvideo',
    userId: flags.user ?? env.DSM_USER ?? 'tnv001',
    auth: clusterKeyFrom(flags, env),
    tlsCa: readTlsCa(flags['tls-ca'] ?? env.DSM_TLS_CA),
  };
}

function readTlsCa(file: string | undefined): string | undefined {
  if (!file) return undefined;
  try {
    return readFileSync(file, 'utf8');
  } catch (e) {
    throw new UsageError(`cannot read the TLS CA file ${file}: ${messageOf(e)}`);
  }
}

/** `A-B` (inclusive, as in HTTP), `A-` (to the end) or `-N` (the last N bytes). */
export function parseRange(
  text: string,
  size: () => Promise<number>,
): Promise<{ offset: number; length: number }> {
  const m = /^(\d*)-(\d*)$/.exec(text);
  if (!m || (m[1] === '' && m[2] === '')) throw new UsageError(`bad --range "${text}": use A-B, A- or -N`);
  const a = m[1] === '' ? null : Number(m[1]);
  const b = m[2] === '' ? null : Number(m[2]);
  if (a === null) {
    return size().then((n) => {
      const len = Math.min(b as number, n);
      return { offset: n - len, length: len };
    });
  }
  if (b === null) return Promise.resolve({ offset: a, length: 0 });
  if (b < a) throw new UsageError(`bad --range "${text}": end before start`);
  return Promise.resolve({ offset: a, length: b - a + 1 });
}

export class UsageError extends Error {}

export interface SecretFlags {
  secret?: string;
  'secret-file'?: string;
}

/** A secret file larger than this is a wrong path (a key is a few dozen bytes). */
const SECRET_FILE_MAX = 64 * 1024;

/**
 * The HMAC secret of `dsm token` / `dsm sign`, first match wins: `--secret-file FILE` (its text,
 * one trailing newline dropped), `--secret S` (works, but argv shows in `ps` and shell history:
 * `warn` is told so), then `env[envName]` ($DSM_TOKEN_SECRET for tokens, $DSM_SIGNING_SECRET for
 * signed URLs). undefined = none given (the caller takes the key from --config).
 */
export function secretFrom(
  flags: SecretFlags,
  envName: string,
  env: Record<string, string | undefined> = process.env,
  warn: (message: string) => void = () => {},
): { secret: string; source: string } | undefined {
  if (flags['secret-file'] !== undefined && flags.secret !== undefined) {
    throw new UsageError('give --secret-file or --secret, not both');
  }
  const file = flags['secret-file'];
  if (file !== undefined) {
    let text: string;
    try {
      if (statSync(file).size > SECRET_FILE_MAX) throw new Error(`larger than ${SECRET_FILE_MAX} bytes`);
      text = readFileSync(file, 'utf8');
    } catch (e) {
      throw new UsageError(`cannot read the secret file ${file}: ${messageOf(e)}`);
    }
    const secret = text.replace(/\r?\n$/, '');
    if (!secret) throw new UsageError(`the secret file ${file} is empty`);
    return { secret, source: `secret file ${file}` };
  }
  if (flags.secret !== undefined) {
    if (!flags.secret) throw new UsageError('--secret is empty');
    warn(
      `--secret on the command line is visible to other users (ps, shell history): use --secret-file FILE or $${envName}`,
    );
    return { secret: flags.secret, source: '--secret' };
  }
  const fromEnv = env[envName];
  if (fromEnv) return { secret: fromEnv, source: `$${envName}` };
  return undefined;
}
