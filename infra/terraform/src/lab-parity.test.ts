/**
 * The local environment's rendered provisioning of a tracker pair, an id pair and a storage
 * group is byte for byte what the HA tests start in namespaces (@dsm/ha/lab): the same
 * node config files, the same keepalived.conf per host, the same GlusterFS steps and the same
 * mount per storage host. The lab's side comes from the lab's own methods (src/lab-parity.ts);
 * the environment's side from dsm.json through the renderer and, for what a host receives, through
 * the user data as Terraform's templatefile and cloud-init hand it over.
 */
import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { loadEnvSpec } from './inputs.ts';
import { type LabModule, labFiles, labMountArgv, loadLab, verifyAgainstLab } from './lab-parity.ts';
import { renderEnvironment } from './render-environment.ts';
import { type EnvSpec, parseEnvSpec } from './spec.ts';
import { applyTerraformTemplate } from './template.ts';

const { spec, inputSha256 } = loadEnvSpec('local');
const r = renderEnvironment(spec, inputSha256);
const lab: LabModule = await loadLab();
const want = await labFiles(lab);

/** A file as the host receives it (user data through templatefile, then cloud-init). */
function delivered(host: string, path: string): string {
  const text = applyTerraformTemplate(r.files.get(`${host}/user-data.yaml.tftpl`)!, {});
  const f = (parseYaml(text) as { write_files: { path: string; content: string }[] }).write_files.find(
    (x) => x.path === path,
  );
  if (!f) throw new Error(`${host}: no ${path} in the user data`);
  return f.content;
}

describe('local environment = the HA lab (@dsm/ha/lab)', () => {
  it('same hosts, addresses, VIPs, ports and volume', () => {
    const hosts = { ...spec.trackers.hosts, ...spec.idServers.hosts, ...spec.storageGroups.group001!.hosts };
    expect(Object.keys(hosts)).toEqual(lab.HOSTS.filter((h) => h !== 'c'));
    for (const [h, a] of Object.entries(hosts)) expect(a, h).toBe(lab.ipOf(h));
    expect(spec.trackers.vip).toBe(`${lab.TRACKER_VIP}/24`);
    expect(spec.idServers.vip).toBe(`${lab.ID_VIP}/24`);
    expect([spec.trackers.port, spec.idServers.port, spec.storageGroups.group001!.port]).toEqual([
      lab.TRACKER_PORT,
      lab.ID_PORT,
      lab.STORAGE_PORT,
    ]);
    expect(Object.keys(spec.storageGroups)).toEqual([lab.VOLUME]);
  });

  it('node config files: byte for byte what the lab writes before it starts each node (Lab#nodeConfig)', () => {
    for (const h of ['t1', 't2', 'i1', 'i2', 's1', 's2', 's3']) {
      const role = h.startsWith('t') ? 'tracker' : h.startsWith('i') ? 'id' : 'storage';
      const labFile = want.get(`${h}/${role}.json`);
      expect(labFile, h).toBeDefined();
      expect(r.files.get(`${h}/${role}.json`), h).toBe(labFile);
      expect(delivered(h, `/etc/dsm/${role}.json`), h).toBe(labFile);
    }
  });

  it('keepalived.conf: byte for byte what the lab renders for each host of both pairs', () => {
    for (const h of ['t1', 't2', 'i1', 'i2']) {
      const labConf = want.get(`${h}/keepalived.conf`);
      expect(labConf, h).toMatch(/^vrrp_instance /m);
      expect(r.files.get(`${h}/keepalived.conf`), h).toBe(labConf);
      expect(delivered(h, '/etc/keepalived/keepalived.conf'), h).toBe(labConf);
    }
  });

  it('GlusterFS steps: the commands the lab runs on s1 (GlusterLab#groupSteps), in order', () => {
    const labSteps = want.get('s1/gluster-steps.json')!;
    expect(JSON.parse(labSteps).commands.length).toBeGreaterThanOrEqual(5);
    expect(r.files.get('s1/gluster-steps.json')).toBe(labSteps);
    // the script on s1 runs exactly these argv, in this order (with waits and idempotence guards)
    const script = delivered('s1', '/usr/local/sbin/dsm-gluster-steps');
    expect(script).toBe(want.get('s1/dsm-gluster-steps'));
    let at = 0;
    for (const c of JSON.parse(labSteps).commands as string[][]) {
      const i = script.indexOf(c.join(' '), at);
      expect(i, c.join(' ')).toBeGreaterThan(at);
      at = i;
    }
  });

  it('mount of the group volume on each storage host: the argv GlusterLab#mountVolume runs', async () => {
    for (const h of ['s1', 's2', 's3']) {
      const labArgv = await labMountArgv(lab, h);
      expect(labArgv.slice(0, 3), h).toEqual(['mount', '-t', 'glusterfs']);
      expect(labArgv.at(-2), h).toBe(`${lab.ipOf(h)}:/${lab.VOLUME}`);
      expect(JSON.parse(r.files.get(`${h}/mount.json`)!).argv, h).toEqual(labArgv);
      expect(delivered(h, '/usr/local/sbin/dsm-mount-group'), h).toContain(
        `\nretry 120 ${labArgv.join(' ')}\n`,
      );
    }
  });

  it('verifyAgainstLab (what scripts/local-lab.sh runs before it starts anything) finds no difference', async () => {
    expect(await verifyAgainstLab(r, lab)).toEqual([]);
  });

  it('verifyAgainstLab reports a local environment that drifted from the lab', async () => {
    const drift = async (edit: (s: EnvSpec) => void) => {
      const s = structuredClone(spec);
      edit(s);
      return verifyAgainstLab(renderEnvironment(parseEnvSpec(s), 'x'), lab);
    };
    expect(
      await drift((s) => {
        s.trackers.virtualRouterId = 61;
      }),
    ).toEqual(["t1/keepalived.conf differs from the lab's", "t2/keepalived.conf differs from the lab's"]);
    expect(
      await drift((s) => {
        s.idServers.config.step = 20;
      }),
    ).toEqual(["i1/id.json differs from the lab's", "i2/id.json differs from the lab's"]);
    expect(
      await drift((s) => {
        s.storageGroups.group001!.brickPath = '/tmp/dsm-halab/{host}/brick';
      }),
    ).toEqual([
      "s1/gluster-steps.json differs from the lab's",
      "s1/dsm-gluster-steps differs from the lab's",
    ]);
    expect(
      await drift((s) => {
        delete s.storageGroups.group001!.mountLogFile;
      }),
    ).toEqual([
      "s1/mount.argv differs from the lab's",
      "s2/mount.argv differs from the lab's",
      "s3/mount.argv differs from the lab's",
    ]);
    expect(
      await drift((s) => {
        s.storageGroups.group001!.hosts = { s1: '10.213.0.15', s2: '10.213.0.16', s4: '10.213.0.18' };
      }),
    ).toContain('host s3 of the lab is not in the local environment');
  });
});
