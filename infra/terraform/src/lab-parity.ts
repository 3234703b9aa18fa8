/**
 * The HA tests' namespace lab (test/src/ha/lab.ts) seen from here: what it starts, taken from
 * the lab itself where it can be, and the differences from the local environment's rendered
 * provisioning.
 *
 * - node configs: `Lab#nodeConfig(h)` (the object the lab writes, as `configText` writes it);
 * - GlusterFS steps: `Lab#groupSteps()`;
 * - the mount of each storage host: `Lab#mountVolume(h)` run with its `inNode` recording the
 *   commands instead of entering a namespace, so the argv is the lab's own;
 * - keepalived.conf: the lab renders it inline in the static `Lab.up` (which needs root and
 *   starts everything), so its `renderVipPair` call is mirrored below and lab.ts's source text is
 *   checked to hold exactly that call: a change there is reported as a difference until the
 *   mirror (and environments/local/dsm.json) follow.
 *
 * Gap (reported to the HA work): @dsm/test does not export the lab, so it is loaded by path at
 * run time. Once the lab exports its keepalived inputs, the mirror goes.
 */
import { readFileSync } from 'node:fs';
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
}

export async function loadLab(): Promise<LabModule> {
  return (await import(LAB_FILE)) as LabModule;
}

/**
 * The keepalived part of `Lab.up`, as lab.ts writes it (whitespace aside): the two pairs and the
 * one `renderVipPair` call. `labKeepalived` renders exactly this.
 */
export const LAB_VIP_SOURCE = [
  `{
    role: 'tracker',
    hosts: ['t1', 't2'] as Host[],
    vip: TRACKER_VIP,
    vrid: 51,
    port: TRACKER_PORT,
    reply: Command.TRACKER_REPLY,
  },
  {
    role: 'id',
    hosts: ['i1', 'i2'] as Host[],
    vip: ID_VIP,
    vrid: 52,
    port: ID_PORT,
    reply: Command.ID_REPLY,
  },`,
  `const confs = renderVipPair({
    role: p.role,
    vip: \`\${p.vip}/24\`,
    interface: 'eth0',
    virtualRouterId: p.vrid,
    nodes: p.hosts.map((h) => ({ name: h, address: ipOf(h) })),
    checkAddress: \`127.0.0.1:\${p.port}\`,
    replyCommand: p.reply,
    advertIntMs: 100,
    trackFileDir: STATE,
  });`,
];

const squash = (s: string) => s.replace(/\s+/g, '');

/** Problems with the mirror: lab.ts no longer holds exactly the mirrored keepalived code. */
export function labSourceProblems(src = readFileSync(LAB_FILE, 'utf8')): string[] {
  const problems: string[] = [];
  const flat = squash(src);
  for (const part of LAB_VIP_SOURCE)
    if (!flat.includes(squash(part)))
      problems.push(
        `lab.ts changed its keepalived inputs (no longer contains: ${part.split('\n')[0]}…): update LAB_VIP_SOURCE and labKeepalived in infra/terraform/src/lab-parity.ts and environments/local/dsm.json`,
      );
  const calls = src.match(/\brenderVipPair\(/g)?.length ?? 0;
  if (calls !== 1) problems.push(`lab.ts calls renderVipPair ${calls} times, the mirror knows one call`);
  return problems;
}

/** keepalived.conf per host, as `Lab.up` renders them (LAB_VIP_SOURCE with the lab's constants). */
export function labKeepalived(lab: LabModule, inst: LabInstance): Map<string, string> {
  const out = new Map<string, string>();
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
  for (const p of pairs)
    for (const c of renderVipPair({
      role: p.role,
      vip: `${p.vip}/24`,
      interface: 'eth0',
      virtualRouterId: p.vrid,
      nodes: p.hosts.map((h) => ({ name: h, address: lab.ipOf(h) })),
      checkAddress: `127.0.0.1:${p.port}`,
      replyCommand: p.reply,
      advertIntMs: 100,
      trackFileDir: inst.dir, // STATE
    }))
      out.set(c.name, c.conf);
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
  const diffs = labSourceProblems();
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
