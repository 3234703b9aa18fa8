/**
 * The HA tests' namespace lab (@dsm/ha/lab, infra/ha/src/lab) seen from here: what it starts,
 * taken from the lab itself, and the differences from the local environment's rendered
 * provisioning.
 *
 * - node configs: `Lab#nodeConfig(h)` (the object the lab writes, as `configText` writes it);
 * - GlusterFS steps: `GlusterLab#groupSteps()`;
 * - the mount of each storage host: `GlusterLab#mountVolume(h)` run with a command runner that
 *   records the commands instead of entering a namespace, so the argv is the lab's own;
 * - keepalived.conf: `labVipConfs(dir)`, the function the lab renders and starts them with.
 */
import * as labModule from '@dsm/ha/lab';
import { configText } from './node-configs.ts';
import type { RenderedEnvironment } from './render-environment.ts';
import { glusterStepsScript } from './templates.ts';

/** The lab's module (a parameter of the functions below, so a test can hand in a changed one). */
export type LabModule = typeof labModule;

export async function loadLab(): Promise<LabModule> {
  return labModule;
}

/** keepalived.conf per host, as the lab renders them (the lab's own `labVipConfs`). */
export function labKeepalived(lab: LabModule, dir: string = lab.LAB_STATE): Map<string, string> {
  const out = new Map<string, string>();
  for (const p of lab.labVipConfs(dir)) for (const c of p.confs) out.set(c.name, c.conf);
  return out;
}

/** The mount argv `GlusterLab#mountVolume(h)` runs in h's namespaces (recorded, nothing is run). */
export async function labMountArgv(lab: LabModule, h: string): Promise<string[]> {
  if (!lab.isStorageHost(h)) throw new Error(`${h} is not a storage host of the lab`);
  const calls: string[][] = [];
  const gluster = new lab.GlusterLab({
    run: async (_host, argv) => {
      calls.push(argv);
      return '';
    },
  });
  await gluster.mountVolume(h);
  const mounts = calls.filter((a) => a[0] === 'mount');
  if (mounts.length !== 1)
    throw new Error(`GlusterLab#mountVolume(${h}) ran ${mounts.length} mount commands`);
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
  for (const [h, conf] of labKeepalived(lab, inst.dir)) out.set(`${h}/keepalived.conf`, conf);
  const steps = inst.gluster.groupSteps();
  const first = lab.STORAGE_HOSTS[0] as string;
  out.set(`${first}/gluster-steps.json`, `${JSON.stringify(steps, null, 2)}\n`);
  out.set(`${first}/dsm-gluster-steps`, glusterStepsScript(steps, lab.VOLUME, lab.STORAGE_HOSTS.length));
  for (const h of lab.STORAGE_HOSTS) out.set(`${h}/mount.argv`, JSON.stringify(await labMountArgv(lab, h)));
  return out;
}

/** Differences between the rendered local environment and what the lab starts ([] = none). */
export async function verifyAgainstLab(r: RenderedEnvironment, given?: LabModule): Promise<string[]> {
  const lab = given ?? (await loadLab());
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
