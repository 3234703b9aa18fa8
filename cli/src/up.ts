import { rmSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Cluster, type ClusterOptions } from '@dsm/cluster';
import { UsageError } from './client-config.ts';

/** The nodes run this package's own `dsm` entry (the bundle overrides it with DSM_ENTRY). */
const DSM_BIN = fileURLToPath(new URL('../bin/dsm.js', import.meta.url));

function int(v: string | undefined, name: string, def: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 64) throw new UsageError(`--${name} must be an integer 1..64`);
  return n;
}

/** A MySQL server URL (no database) → one database per role, named as in the seed. */
function mysqlDatabases(base: string): ClusterOptions['databases'] {
  const u = new URL(base);
  if (u.protocol !== 'mysql:') throw new UsageError('--mysql must be a mysql://user:pass@host:port URL');
  const at = (db: string) => {
    const x = new URL(base);
    x.pathname = `/${db}`;
    return x.toString();
  };
  return { tracker: at('tnv_trackerdb'), storage: at('tnv_storagedb'), id: at('tnv_idsdb') };
}

export async function runUp(v: Record<string, string | boolean | undefined>): Promise<number> {
  const dir = resolve(String(v.dir ?? process.env.DSM_HOME ?? '.dsm/cluster'));
  if (v.fresh) rmSync(dir, { recursive: true, force: true });
  const opts: ClusterOptions = {
    dir,
    trackers: int(v.trackers as string | undefined, 'trackers', 2),
    ids: int(v.ids as string | undefined, 'ids', 1),
    groups: v.groups ? String(v.groups).split(',').filter(Boolean) : undefined,
    storagesPerGroup: int(v['storages-per-group'] as string | undefined, 'storages-per-group', 2),
    gateways: v.gateways === '0' ? 0 : int(v.gateways as string | undefined, 'gateways', 1),
    // processes per gateway: one per core unless --gateway-workers says otherwise
    gatewayWorkers:
      v['gateway-workers'] === undefined || v['gateway-workers'] === 'auto'
        ? 'auto'
        : int(v['gateway-workers'] as string, 'gateway-workers', 1),
    databases: v.mysql ? mysqlDatabases(String(v.mysql)) : undefined,
    cache: v.redis ? String(v.redis) : undefined,
    entry: DSM_BIN,
    // every process serves /metrics, /healthz, /readyz on its port + 10000 (loopback)
    adminPortOffset: 10_000,
    onReady: (n) => {
      const admin = n.ready.admin ?? n.ready.adminUrl;
      process.stdout.write(
        `  ${n.role.padEnd(8)} ${n.name.padEnd(16)} ${`${n.host}:${n.port}`.padEnd(22)}${admin ? `admin ${admin}` : ''}\n`,
      );
    },
  };
  process.stdout.write(`starting dsm cluster in ${dir}\n`);
  const cluster = await Cluster.start(opts);
  const gw = cluster.addresses('gateway')[0];
  process.stdout.write(
    `\ncluster up: trackers ${cluster.addresses('tracker').join(', ')}; logs in ${dir}/logs\n` +
      (gw
        ? `gateway: http://${gw}/  (curl --data-binary @movie.mp4 -H 'Content-Type: video/mp4' http://${gw}/files  → JSON with the file's url)\n`
        : '') +
      `try:  npx dsm upload FILE   |   npx dsm status   |   Ctrl-C to stop\n`,
  );
  await new Promise<void>((done) => {
    let stopping = false;
    const stop = () => {
      if (stopping) return;
      stopping = true;
      process.stdout.write('\nstopping…\n');
      cluster.stop().then(done, done);
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
    // a node that dies on its own is reported (its peers keep serving)
    for (const n of cluster.nodes.values()) {
      void n.exited.then((code) => {
        if (!stopping) process.stderr.write(`node ${n.name} exited (code ${code}); see ${n.logFile}\n`);
      });
    }
  });
  process.stdout.write('stopped\n');
  return 0;
}
