/**
 * The local environment's rendered provisioning is byte-for-byte what the HA tests start in
 * namespaces (test/src/ha/lab.ts): the same node config files, the same keepalived.conf per
 * host, the same GlusterFS steps and the same mount per storage host, from the same renderers.
 */
import { readFileSync } from 'node:fs';
import { renderVipPair } from '@dsm/ha';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { type LabModule, loadLab, verifyAgainstLab } from './lab-parity.ts';
import { configText, glusterStepsScript, loadEnvSpec, renderEnvironment } from './render-provisioning.ts';
import { applyTerraformTemplate } from './template.ts';

const { spec, inputSha256 } = loadEnvSpec('local');
const r = renderEnvironment(spec, inputSha256);
const lab: LabModule = await loadLab();
const labInstance = new lab.Lab();

/** A file as the host receives it (user data through templatefile, then cloud-init). */
function delivered(host: string, path: string): string {
  const text = applyTerraformTemplate(r.files.get(`${host}/user-data.yaml.tftpl`)!, {});
  const f = (parseYaml(text) as { write_files: { path: string; content: string }[] }).write_files.find(
    (x) => x.path === path,
  );
  if (!f) throw new Error(`${host}: no ${path} in the user data`);
  return f.content;
}

describe('local environment = the HA lab (test/src/ha/lab.ts)', () => {
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

  it('node config files: byte-for-byte what the lab writes before it starts each node', () => {
    for (const h of ['t1', 't2', 'i1', 'i2', 's1', 's2', 's3']) {
      const { role, config } = labInstance.nodeConfig(h);
      const labFile = configText(config); // lab.ts: writeFileSync(configFile, `${JSON.stringify(config, null, 2)}\n`)
      expect(r.files.get(`${h}/${role}.json`), h).toBe(labFile);
      expect(delivered(h, `/etc/dsm/${role}.json`), h).toBe(labFile);
    }
  });

  it('keepalived.conf: byte-for-byte what the lab renders for each host of both pairs', () => {
    // the lab's renderVipPair call (Lab.up) with the lab's own constants; its literal options
    // (vrid, advertIntMs, interface, trackFileDir) are checked against lab.ts's text below
    const pairs = [
      {
        role: 'tracker',
        hosts: ['t1', 't2'],
        vip: lab.TRACKER_VIP,
        vrid: 51,
        port: lab.TRACKER_PORT,
        reply: 100,
      },
      { role: 'id', hosts: ['i1', 'i2'], vip: lab.ID_VIP, vrid: 52, port: lab.ID_PORT, reply: 101 },
    ];
    for (const p of pairs) {
      const confs = renderVipPair({
        role: p.role,
        vip: `${p.vip}/24`,
        interface: 'eth0',
        virtualRouterId: p.vrid,
        nodes: p.hosts.map((h) => ({ name: h, address: lab.ipOf(h) })),
        checkAddress: `127.0.0.1:${p.port}`,
        replyCommand: p.reply,
        advertIntMs: 100,
        trackFileDir: labInstance.dir,
      });
      for (const c of confs) {
        expect(r.files.get(`${c.name}/keepalived.conf`), c.name).toBe(c.conf);
        expect(delivered(c.name, '/etc/keepalived/keepalived.conf'), c.name).toBe(c.conf);
      }
    }
    const src = readFileSync(lab.LAB_FILE, 'utf8');
    for (const literal of [
      'vrid: 51',
      'vrid: 52',
      "interface: 'eth0'",
      'advertIntMs: 100,',
      'trackFileDir: STATE,',
      'vip: `${p.vip}/24`',
      'checkAddress: `127.0.0.1:${p.port}`',
      'reply: Command.TRACKER_REPLY',
      'reply: Command.ID_REPLY',
    ])
      expect(
        src,
        `lab.ts no longer has ${literal}: update environments/local/dsm.json and this test`,
      ).toContain(literal);
  });

  it('GlusterFS steps: the commands the lab runs on s1, in order', () => {
    const labSteps = labInstance.groupSteps();
    expect(r.files.get('s1/gluster-steps.json')).toBe(`${JSON.stringify(labSteps, null, 2)}\n`);
    // the script on s1 runs exactly these argv, in this order (with waits and idempotence guards)
    const script = delivered('s1', '/usr/local/sbin/dsm-gluster-steps');
    expect(script).toBe(glusterStepsScript(labSteps, lab.VOLUME, 3));
    let at = 0;
    for (const c of labSteps.commands) {
      const i = script.indexOf(c.join(' '), at);
      expect(i, c.join(' ')).toBeGreaterThan(at);
      at = i;
    }
  });

  it('mount of the group volume on each storage host: the lab’s argv', () => {
    for (const h of ['s1', 's2', 's3']) {
      const labArgv = lab.labMountArgv(labInstance, h);
      expect(JSON.parse(r.files.get(`${h}/mount.json`)!).argv, h).toEqual(labArgv);
      expect(delivered(h, '/usr/local/sbin/dsm-mount-group')).toContain(labArgv.join(' '));
    }
  });

  it('verifyAgainstLab (what scripts/local-lab.sh runs before it starts anything) finds no difference', async () => {
    expect(await verifyAgainstLab(r)).toEqual([]);
  });
});
