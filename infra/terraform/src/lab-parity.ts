/**
 * The HA tests' namespace lab (test/src/ha/lab.ts) seen from here: loads it, and checks that the
 * local environment's rendered provisioning is what the lab starts.
 *
 * Gap (reported to the HA work): @dsm/test does not export the lab, so it is loaded by path at
 * run time, and two things the lab computes inline are mirrored here (the keepalived options of
 * Lab.up, checked against lab.ts's text in lab-parity.test.ts, and the mount argv of
 * Lab.mountVolume). Once @dsm/test exports the lab (and Lab.up takes its inputs from a spec), this
 * file shrinks to an import.
 */
import { fileURLToPath } from 'node:url';
import { type GlusterGroupSteps, renderVipPair } from '@dsm/ha';
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
  LAB_FILE: string;
  /** Mirror of Lab.mountVolume: own glusterd first, the others as backups, a log file per host. */
  labMountArgv(lab: LabInstance, h: string): string[];
}

export async function loadLab(): Promise<LabModule> {
  const m = (await import(LAB_FILE)) as Omit<LabModule, 'LAB_FILE' | 'labMountArgv'>;
  return {
    ...m,
    LAB_FILE,
    labMountArgv(lab, h) {
      const m0 = lab.groupSteps().mount;
      const opts = [...m0.options, `log-file=${lab.dir}/${h}/mount.log`].join(',');
      const others = m.STORAGE_HOSTS.filter((x) => x !== h).map(m.ipOf);
      const o = opts.replace(/backup-volfile-servers=[^,]*/, `backup-volfile-servers=${others.join(':')}`);
      return ['mount', '-t', 'glusterfs', '-o', o, `${m.ipOf(h)}:/${m.VOLUME}`, lab.dataPath];
    },
  };
}

/** Differences between the rendered local environment and what the lab starts ([] = none). */
export async function verifyAgainstLab(r: RenderedEnvironment, labModule?: LabModule): Promise<string[]> {
  const lab = labModule ?? (await loadLab());
  const inst = new lab.Lab();
  const diffs: string[] = [];
  const same = (what: string, a: string | undefined, b: string) => {
    if (a !== b) diffs.push(`${what} differs from the lab's`);
  };
  for (const h of lab.HOSTS.filter((x) => x !== 'c')) {
    if (!r.manifest.hosts[h]) {
      diffs.push(`host ${h} of the lab is not in the local environment`);
      continue;
    }
    if (r.manifest.hosts[h].address !== lab.ipOf(h)) diffs.push(`address of ${h}`);
    const { role, config } = inst.nodeConfig(h);
    same(`${h}/${role}.json`, r.files.get(`${h}/${role}.json`), configText(config));
  }
  for (const p of [
    {
      role: 'tracker',
      hosts: ['t1', 't2'],
      vip: lab.TRACKER_VIP,
      vrid: 51,
      port: lab.TRACKER_PORT,
      reply: 100,
    },
    { role: 'id', hosts: ['i1', 'i2'], vip: lab.ID_VIP, vrid: 52, port: lab.ID_PORT, reply: 101 },
  ])
    for (const c of renderVipPair({
      role: p.role,
      vip: `${p.vip}/24`,
      interface: 'eth0',
      virtualRouterId: p.vrid,
      nodes: p.hosts.map((h) => ({ name: h, address: lab.ipOf(h) })),
      checkAddress: `127.0.0.1:${p.port}`,
      replyCommand: p.reply,
      advertIntMs: 100,
      trackFileDir: inst.dir,
    }))
      same(`${c.name}/keepalived.conf`, r.files.get(`${c.name}/keepalived.conf`), c.conf);
  const steps = inst.groupSteps();
  same('s1/gluster-steps.json', r.files.get('s1/gluster-steps.json'), `${JSON.stringify(steps, null, 2)}\n`);
  same('s1/dsm-gluster-steps', r.files.get('s1/dsm-gluster-steps'), glusterStepsScript(steps, lab.VOLUME, 3));
  for (const h of lab.STORAGE_HOSTS) {
    const m = r.files.get(`${h}/mount.json`);
    same(
      `${h}/mount.json argv`,
      m && JSON.stringify(JSON.parse(m).argv),
      JSON.stringify(lab.labMountArgv(inst, h)),
    );
  }
  return diffs;
}
