/**
 * The HA tests' namespace lab (test/src/ha/lab.ts) seen from here: what it starts, taken from
 * the lab itself where it can be, and the differences from the local environment's rendered
 * provisioning.
 *
 * - node configs: `Lab#nodeConfig(h)` (the object the lab writes, as `configText` writes it);
 * - GlusterFS steps: `Lab#groupSteps()`;
 * - the mount of each storage host: `Lab#mountVolume(h)` run with its `inNode` recording the
 *   commands instead of entering a namespace, so the argv is the lab's own;
 * - keepalived.conf: `labVipConfs(dir)`, the function `Lab.up` renders and starts them with.
 *
 * @dsm/test does not export the lab (it is test code), so it is loaded by path at run time.
 */
import { fileURLToPath } from 'node:url';
import type { GlusterGroupSteps } from '@dsm/ha';
import { configText, glusterStepsScript, type RenderedEnvironment } from './render-provisioning.ts';

export const LAB_FILE = fileURLToPath(new URL('../../../test/src/ha/lab.ts', import.meta.url));

export interface LabInstance {
  readonly dir: string;
  readonly dataPath: string;
  proxySock: string;
  nodeConfig(h: string): {
    name: string;
    role: 'tracker' | 'id' | 'storage';
    config: Record<string, unknown>;
  };
  groupSteps(): GlusterGroupSteps;
  inNode(h: string, argv: string[], timeoutMs?: number): Promise<string>;
  mountVolume(h: string): Promise<void>;
  vipHolders(vip: string): string[];
  waitStorages(count: number, timeoutMs?: number): Promise<void>;
  client(): {
    upload(req: {
      appId: string;
      userId: string;
      source: { size: number; open(): AsyncIterable<Uint8Array> };
    }): Promise<{ publicId: string; ids: object; group: string }>;
    download(ids: object): Promise<{ stream: AsyncIterable<Uint8Array> }>;
    close(): Promise<void>;
  };
  down(): Promise<void>;
}

export interface LabModule {
  Lab: { new (): LabInstance; up(log?: (s: string) => void): Promise<LabInstance> };
  HOSTS: readonly string[];
  STORAGE_HOSTS: readonly string[];
  ipOf(h: string): string;
  TRACKER_VIP: string;
  ID_VIP: string;
  TRACKER_PORT: number;
  ID_PORT: number;
  STORAGE_PORT: number;
  VOLUME: string;
  labVipConfs(trackFileDir?: string): { hosts: string[]; confs: { name: string; conf: string }[] }[];
}

export async function loadLab(): Promise<LabModule> {
  return (await import(LAB_FILE)) as LabModule;
}

/** keepalived.conf per host, as `Lab.up` renders them (the lab's own `labVipConfs`). */
export function labKeepalived(lab: LabModule, inst: LabInstance): Map<string, string> {
  const out = new Map<string, string>();
  for (const p of lab.labVipConfs(inst.dir)) for (const c of p.confs) out.set(c.name, c.conf);
  return out;
}

/** The mount argv `Lab#mountVolume(h)` runs in h's namespaces (recorded, nothing is run). */
export async function labMountArgv(lab: LabModule, h: string): Promise<string[]> {
  const inst = new lab.Lab();
  const calls: string[][] = [];
  inst.inNode = async (_host: string, argv: string[]) => {
    calls.push(argv);
    return '';
  };
  await inst.mountVolume(h);
  const mounts = calls.filter((a) => a[0] === 'mount');
  if (mounts.length !== 1) throw new Error(`Lab#mountVolume(${h}) ran ${mounts.length} mount commands`);
  return mounts[0] as string[];
}

/** What the lab starts, by rendered file name (`<host>/<file>`) → content. */
export async function labFiles(lab: LabModule): Promise<Map<string, string>> {
  const inst = new lab.Lab();
  const out = new Map<string, string>();
  for (const h of lab.HOSTS.filter((x) => x !== 'c')) {
    const { role, config } = inst.nodeConfig(h);
    out.set(`${h}/${role}.json`, configText(config));
  }
  for (const [h, conf] of labKeepalived(lab, inst)) out.set(`${h}/keepalived.conf`, conf);
  const steps = inst.groupSteps();
  const first = lab.STORAGE_HOSTS[0] as string;
  out.set(`${first}/gluster-steps.json`, `${JSON.stringify(steps, null, 2)}\n`);
  out.set(`${first}/dsm-gluster-steps`, glusterStepsScript(steps, lab.VOLUME, lab.STORAGE_HOSTS.length));
  for (const h of lab.STORAGE_HOSTS) out.set(`${h}/mount.argv`, JSON.stringify(await labMountArgv(lab, h)));
  return out;
}

/** Differences between the rendered local environment and what the lab starts ([] = none). */
export async function verifyAgainstLab(r: RenderedEnvironment, labModule?: LabModule): Promise<string[]> {
  const lab = labModule ?? (await loadLab());
  const diffs: string[] = [];
  for (const h of lab.HOSTS.filter((x) => x !== 'c')) {
    const m = r.manifest.hosts[h];
    if (!m) diffs.push(`host ${h} of the lab is not in the local environment`);
    else if (m.address !== lab.ipOf(h)) diffs.push(`address of ${h}: ${m.address}, the lab's ${lab.ipOf(h)}`);
  }
  for (const [rel, want] of await labFiles(lab)) {
    const got = rel.endsWith('/mount.argv')
      ? (() => {
          const m = r.files.get(rel.replace(/argv$/, 'json'));
          return m === undefined ? undefined : JSON.stringify(JSON.parse(m).argv);
        })()
      : r.files.get(rel);
    if (got === undefined) diffs.push(`${rel}: not rendered`);
    else if (got !== want) diffs.push(`${rel} differs from the lab's`);
  }
  return diffs;
}
