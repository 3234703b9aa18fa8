import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parseGatewayConfig } from '@dsm/gateway';
import { type RunningGateway, startGateway } from '@dsm/gateway/node';
import type { TestCluster } from '@dsm/testkit';

// What the whole-cluster tests share: the cluster start of @dsm/testkit (the launcher of
// `dsm up`, one port scheme) on the two backends by their one set of names.
export {
  BACKEND_NAMES,
  type BackendName,
  collect,
  freePortRange,
  patternChunks,
  patternSource,
  startTestCluster,
  type TestCluster,
} from '@dsm/testkit';

/**
 * A gateway in front of `t` that keeps no locate or stat cache (every request asks the cluster,
 * so a test sees each change at once), with `extra` gateway config on top.
 */
export function startUncachedGateway(
  t: TestCluster,
  extra: Record<string, unknown> = {},
): Promise<RunningGateway> {
  return startGateway(
    parseGatewayConfig({
      listen: '127.0.0.1:0',
      trackers: t.cluster.addresses('tracker'),
      locateCacheMs: 0,
      statCacheMs: 0,
      ...extra,
    }),
  );
}

/** Every regular file under `dir`, skipping the storages' temp and partial folders. */
export function finalFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    if (name === '.tmp' || name === '.partial') continue;
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...finalFiles(p));
    else out.push(p);
  }
  return out;
}
