import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { type Address, parseAddress } from '@dsm/packets';

export interface ClientSettings {
  trackers: Address[];
  appId: string;
  userId: string;
}

/**
 * Where client verbs find the cluster, first match wins: flags, environment (DSM_TRACKERS,
 * DSM_APP, DSM_USER), the cluster.json that `dsm up` writes (in DSM_HOME or ./.dsm/cluster),
 * then the seed's defaults (tracker 127.0.0.1:21000, app tnvideo, user tnv001).
 */
export function clientSettings(flags: { trackers?: string; app?: string; user?: string }): ClientSettings {
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
  };
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
