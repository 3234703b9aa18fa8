/**
 * The rendered provisioning of every environment, as a VM receives it: the user data after
 * Terraform's templatefile (secrets filled in) is valid YAML starting with #cloud-config, carries
 * exactly the rendered files, its keepalived configs pass `keepalived -t`, its node configs pass
 * the nodes' own schemas and its scripts pass `bash -n`.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { promisify } from 'node:util';
import { parseConfig } from '@dsm/common';
import { configSchema as gatewaySchema } from '@dsm/gateway';
import { configSchema as idSchema } from '@dsm/id-node';
import { configSchema as storageSchema } from '@dsm/storage-node';
import { configSchema as trackerSchema } from '@dsm/tracker-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import {
  listEnvironments,
  loadEnvSpec,
  RENDERED_DIR,
  REPO_ROOT,
  runtimeOf,
  TERRAFORM_DIR,
} from './inputs.ts';
import { nodeConfigFor } from './node-configs.ts';
import { type RenderedEnvironment, renderEnvironment } from './render-environment.ts';
import { type EnvSpec, parseEnvSpec, SECRET_MARK } from './spec.ts';
import { applyTerraformTemplate, templateVariables, toTerraformTemplate } from './template.ts';

const run = promisify(execFile);
const PATH = `${process.env.PATH}:/usr/sbin:/sbin`;
let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'dsm-tf-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A stand-in secret per name, of the alphabet the environments' `secrets` variable allows. */
const secretValue = (name: string) => `${name.replace(/_/g, '-')}.${'x'.repeat(40)}`;
const fillSecrets = (s: string) => s.replace(SECRET_MARK, (_m, n: string) => secretValue(n));

interface CloudConfig {
  hostname: string;
  packages: string[];
  write_files: { path: string; permissions: string; content: string }[];
  runcmd: string[][];
}

const ENVS = listEnvironments();
const listFiles = (d: string): string[] =>
  readdirSync(d, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? listFiles(join(d, e.name)) : [join(d, e.name)],
  );
const rendered = new Map<string, { spec: EnvSpec; r: RenderedEnvironment }>();
for (const env of ENVS) {
  const { spec, inputSha256 } = loadEnvSpec(env);
  rendered.set(env, { spec, r: renderEnvironment(spec, inputSha256) });
}

/** What the VM gets: templatefile(user-data.yaml.tftpl, secrets), parsed as cloud-init does. */
function userDataOf(env: string, host: string): { text: string; doc: CloudConfig } {
  const { r } = rendered.get(env)!;
  const tpl = r.files.get(`${host}/user-data.yaml.tftpl`) as string;
  const vars = Object.fromEntries(r.manifest.secrets.map((s) => [s, secretValue(s)]));
  const text = applyTerraformTemplate(tpl, vars);
  return { text, doc: parseYaml(text) as CloudConfig };
}

/**
 * `keepalived -t` on a config exactly as rendered, in a throwaway network + mount namespace
 * laid out like the host: the config's interface exists, and an installed environment's Node
 * and release paths (/opt/...) lead to this Node and this checkout. A missing keepalived fails.
 */
async function keepalivedCheck(spec: EnvSpec, name: string, conf: string, iface: string): Promise<void> {
  const f = join(dir, `${name}.conf`);
  writeFileSync(f, conf);
  const rt = runtimeOf(spec);
  const lines = ['set -e', `ip link add ${iface} type veth peer name dsmtfpeer0`];
  if (spec.install) {
    const top = `/${rt.node.split('/')[1]}`;
    expect(`/${rt.dsm.split('/')[1]}`).toBe(top);
    lines.push(
      `mount -t tmpfs -o mode=0755 dsm-tf ${top}`,
      `mkdir -p ${rt.node.replace(/\/[^/]+$/, '')} ${rt.dsm}`,
      `touch ${rt.node}`,
      `mount --bind ${process.execPath} ${rt.node}`,
      `mount --bind ${REPO_ROOT} ${rt.dsm}`,
    );
  }
  lines.push(`exec keepalived -t -f ${f}`);
  const r = await run(
    'unshare',
    ['--net', '--mount', '--propagation', 'private', 'sh', '-c', lines.join('\n')],
    {
      env: { ...process.env, PATH },
    },
  ).catch((e: { code?: number | string; stderr?: string; stdout?: string; message: string }) => e);
  if ('code' in r && r.code)
    throw new Error(
      `keepalived -t rejected ${name} (exit ${r.code}): ${r.stderr || r.message}${r.stdout ?? ''}\n${conf}`,
    );
}

const SCHEMA_OF: Record<string, Parameters<typeof parseConfig>[0]> = {
  '/etc/dsm/tracker.json': trackerSchema,
  '/etc/dsm/id.json': idSchema,
  '/etc/dsm/storage.json': storageSchema,
  '/etc/dsm/gateway.json': gatewaySchema,
};

describe.each(ENVS)('environment %s', (env) => {
  const { spec, r } = rendered.get(env)!;

  it('renders every host of dsm.json, and the manifest lists their files and secrets', () => {
    const names = Object.keys(r.manifest.hosts);
    expect(names.length).toBeGreaterThanOrEqual(7);
    const used = new Set<string>();
    for (const h of names) {
      expect(r.manifest.hosts[h]!.files).toContain('user-data.yaml.tftpl');
      for (const f of r.manifest.hosts[h]!.files) expect(r.files.has(`${h}/${f}`), `${h}/${f}`).toBe(true);
      for (const v of templateVariables(r.files.get(`${h}/user-data.yaml.tftpl`)!)) used.add(v);
    }
    expect([...used].sort()).toEqual(r.manifest.secrets);
    expect(JSON.parse(r.files.get('manifest.json')!)).toEqual(r.manifest);
  });

  it('node-protocol auth is on: every node requires the cluster key provisioning writes, gateways prove it (the local lab alone opts out)', () => {
    let nodes = 0;
    for (const [host, h] of r.hosts) {
      const doc = userDataOf(env, host).doc;
      const key = doc.write_files.find((f) => f.path === '/etc/dsm/cluster.key');
      const configFile = h.files.find((f) => f.path in SCHEMA_OF && f.path !== '/etc/dsm/gateway.json');
      if (configFile) {
        nodes++;
        const c = JSON.parse(configFile.content) as {
          auth: { required?: boolean; allowUnauthenticated?: boolean; keys?: { secretFile?: string }[] };
        };
        if (env === 'local') {
          // the HA lab's closed namespace network, byte for byte what the lab starts
          expect(c.auth, host).toEqual({ allowUnauthenticated: true });
          expect(key, host).toBeUndefined();
          continue;
        }
        expect(c.auth.required, host).toBe(true);
        expect(c.auth.keys?.[0]?.secretFile, host).toBe('/etc/dsm/cluster.key');
      }
      if (h.role === 'gateway') {
        const g = JSON.parse(h.files.find((f) => f.path === '/etc/dsm/gateway.json')!.content);
        expect(g.cluster, host).toEqual({ keyId: 'main', keyFile: '/etc/dsm/cluster.key' });
      }
      if (configFile || h.role === 'gateway') {
        expect(key?.permissions, `${host}: the key file, not world-readable`).toBe('0640');
        expect(key?.content, host).toBe(`${fillSecrets('{{secret:cluster_key}}')}\n`);
      }
    }
    expect(nodes).toBeGreaterThanOrEqual(7);
    if (env !== 'local') expect(r.manifest.secrets).toContain('cluster_key');
  });

  it('user data after templatefile: #cloud-config, valid YAML, exactly the rendered files, under 32 KiB', () => {
    for (const [host, h] of r.hosts) {
      const { text, doc } = userDataOf(env, host);
      expect(text.startsWith('#cloud-config\n'), host).toBe(true);
      expect(Buffer.byteLength(text), `${host}: Hetzner takes at most 32 KiB of user data`).toBeLessThan(
        32 * 1024,
      );
      expect(doc.hostname).toBe(host);
      expect(doc.runcmd).toEqual([['bash', '/usr/local/sbin/dsm-provision']]);
      expect(doc.packages).toEqual(h.packages);
      expect(doc.write_files.map((f) => [f.path, f.permissions, f.content])).toEqual(
        h.files.map((f) => [f.path, f.mode, fillSecrets(f.content)]),
      );
      expect(text).not.toMatch(/\{\{secret:/);
    }
  });

  it('keepalived -t accepts every keepalived.conf in the user data', async () => {
    let n = 0;
    for (const [host, h] of r.hosts) {
      if (h.role !== 'tracker' && h.role !== 'id') continue;
      const conf = userDataOf(env, host).doc.write_files.find(
        (f) => f.path === '/etc/keepalived/keepalived.conf',
      );
      expect(conf, host).toBeDefined();
      const pair = h.role === 'tracker' ? spec.trackers : spec.idServers;
      await keepalivedCheck(spec, `${env}-${host}`, conf!.content, pair.interface);
      n++;
    }
    expect(n).toBe(Object.keys(spec.trackers.hosts).length + Object.keys(spec.idServers.hosts).length);
  });

  it('node configs in the user data pass the nodes’ own schemas', () => {
    for (const host of r.hosts.keys()) {
      for (const f of userDataOf(env, host).doc.write_files) {
        const schema = SCHEMA_OF[f.path];
        if (!schema) continue;
        expect(() => parseConfig(schema, JSON.parse(f.content)), `${host}:${f.path}`).not.toThrow();
      }
    }
  });

  it('every script passes bash -n', async () => {
    for (const host of r.hosts.keys())
      for (const f of userDataOf(env, host).doc.write_files) {
        if (f.permissions !== '0755') continue;
        const file = join(dir, `${env}-${host}-${f.path.split('/').pop()}`);
        writeFileSync(file, f.content);
        await run('bash', ['-n', file]).catch((e: { stderr: string }) => {
          throw new Error(`${host}:${f.path}: ${e.stderr}`);
        });
      }
  });

  it('rendered/<env> in the checkout is current: byte for byte what the renderer makes now (or ignored by git)', () => {
    const dir = join(RENDERED_DIR, env);
    if (!spec.install) {
      // the HA lab's Node and checkout paths: every clone renders its own, git does not keep it
      expect([...r.files.values()].join('\n')).toContain(REPO_ROOT.replace(/\/$/, ''));
      expect(readFileSync(join(TERRAFORM_DIR, '.gitignore'), 'utf8').split('\n')).toContain(
        `rendered/${env}/`,
      );
      return;
    }
    expect(existsSync(dir), `${dir}: run npm run render -w @dsm/terraform -- ${env}`).toBe(true);
    const onDisk = listFiles(dir)
      .map((f) => relative(dir, f))
      .sort();
    expect(onDisk, `rendered/${env}: files differ; run npm run render -w @dsm/terraform -- ${env}`).toEqual(
      [...r.files.keys()].sort(),
    );
    for (const [rel, content] of r.files)
      expect(
        readFileSync(join(dir, rel), 'utf8') === content,
        `rendered/${env}/${rel} is stale: run npm run render -w @dsm/terraform -- ${env}`,
      ).toBe(true);
  });

  it('dsm units run unprivileged: User=dsm, NoNewPrivileges, ProtectSystem=strict with ReadWritePaths, PrivateTmp', () => {
    let units = 0;
    for (const [host, h] of r.hosts) {
      const delivered = userDataOf(env, host).doc.write_files;
      const unitFile = delivered.find((f) =>
        /^\/etc\/systemd\/system\/dsm-(tracker|id|storage|gateway)\.service$/.test(f.path),
      );
      if (h.role === 'data') {
        expect(unitFile, host).toBeUndefined();
        continue;
      }
      expect(unitFile, host).toBeDefined();
      units++;
      const lines = unitFile!.content.split('\n');
      for (const l of [
        'User=dsm',
        'Group=dsm',
        'NoNewPrivileges=yes',
        'ProtectSystem=strict',
        'PrivateTmp=yes',
      ])
        expect(lines, `${host}: ${l}`).toContain(l);
      const rw = (lines.find((l) => l.startsWith('ReadWritePaths=')) ?? '')
        .slice('ReadWritePaths='.length)
        .split(' ');
      expect(rw, host).toEqual(expect.arrayContaining(['/var/lib/dsm', '/var/log/dsm']));
      if (h.role === 'storage') {
        const store = (nodeConfigFor(spec, host).config.storePaths as string[])[0] as string;
        expect(rw, host).toContain(store);
        // the mount needs root: only that step runs privileged
        expect(lines, host).toContain('ExecStartPre=+/usr/local/sbin/dsm-mount-group');
      }
      // the gateway's primary alone gets SIGTERM and drains its node:cluster workers
      if (h.role === 'gateway') expect(lines, host).toEqual(expect.arrayContaining(['KillMode=mixed']));
      else expect(lines, host).not.toContain('KillMode=mixed');
      // the provisioning creates the user and its folders before any dsm unit starts, and the
      // node can read its config
      const prov = delivered.find((f) => f.path === '/usr/local/sbin/dsm-provision')!.content;
      const at = (re: RegExp) => prov.split('\n').findIndex((l) => re.test(l));
      const useradd = at(/useradd --system .*dsm$/);
      expect(useradd, host).toBeGreaterThanOrEqual(0);
      expect(at(/^install -d -o dsm -g dsm .*\/var\/lib\/dsm \/var\/log\/dsm$/), host).toBeGreaterThan(
        useradd,
      );
      expect(at(/^chgrp dsm \/etc\/dsm \/etc\/dsm\/\w+\.json$/), host).toBeGreaterThan(useradd);
      expect(at(/systemctl enable --now dsm-/), host).toBeGreaterThan(useradd);
      if (h.role === 'storage')
        expect(at(/^chown dsm:dsm /), host).toBeLessThan(at(/systemctl enable --now dsm-storage/));
      // keepalived and glusterd keep their packages' own (root) units
      expect(
        delivered.some((f) => /keepalived\.service|glusterd\.service/.test(f.path)),
        host,
      ).toBe(false);
    }
    expect(units).toBeGreaterThan(0);
  });

  it('gateways require tokens for this deployment: auth.mode jwt with issuer and audience', () => {
    for (const [host, h] of r.hosts) {
      if (h.role !== 'gateway') continue;
      const auth = nodeConfigFor(spec, host).config.auth as Record<string, unknown>;
      expect(auth.mode, host).toBe('jwt');
      expect(auth.issuer, host).toEqual(expect.any(String));
      expect(auth.audience, host).toEqual(expect.any(String));
    }
  });

  it('storage configs: every member of a group has the same store path, the group volume mount', () => {
    for (const [g, s] of Object.entries(spec.storageGroups)) {
      const paths = Object.keys(s.hosts).map((h) => JSON.stringify(nodeConfigFor(spec, h).config.storePaths));
      expect(new Set(paths).size, g).toBe(1);
      expect(r.manifest.storageGroups[g]!.mountPoint).toBe(JSON.parse(paths[0]!)[0]);
    }
  });
});

describe('renderer rules', () => {
  const base = (): EnvSpec => structuredClone(rendered.get('local')!.spec);

  it('refuses derived keys, unknown keys and bad values in node configs', () => {
    const a = base();
    a.trackers.config.listen = '0.0.0.0:1';
    expect(() => renderEnvironment(parseEnvSpec(a), 'x')).toThrow(/"listen" is derived/);
    const b = base();
    b.idServers.config.stepp = 10;
    expect(() => renderEnvironment(parseEnvSpec(b), 'x')).toThrow(/unknown key "stepp"/);
    const c = base();
    c.idServers.config.step = 1;
    expect(() => renderEnvironment(parseEnvSpec(c), 'x')).toThrow(/config key "step"/);
  });

  it('refuses a gateway without auth.mode jwt, auth.issuer or auth.audience', () => {
    for (const drop of ['mode', 'issuer', 'audience']) {
      const e = structuredClone(rendered.get('dev')!.spec);
      const auth = e.gateways!.config.auth as Record<string, unknown>;
      delete auth[drop];
      // (mode none on 0.0.0.0 is refused by the gateway schema itself unless anonymous uploads
      // are asked for; a Terraform environment refuses even that)
      if (drop === 'mode') Object.assign(auth, { mode: 'none', allowAnonymousUploads: true });
      expect(() => renderEnvironment(parseEnvSpec(e), 'x'), drop).toThrow(
        new RegExp(`auth\\.${drop} is required`),
      );
    }
  });

  it('refuses a host in two roles, shared addresses, and groups that are not three hosts', () => {
    const a = base();
    a.idServers.hosts = { t1: '10.213.0.13', i2: '10.213.0.14' };
    expect(() => renderEnvironment(parseEnvSpec(a), 'x')).toThrow(/both a tracker and a id host/);
    const b = base();
    b.idServers.hosts.i2 = '10.213.0.11';
    expect(() => renderEnvironment(parseEnvSpec(b), 'x')).toThrow(/share the address/);
    const c = base();
    delete c.storageGroups.group001!.hosts.s3;
    expect(() => parseEnvSpec(c)).toThrow(/exactly 3 hosts/);
  });

  it('templates: only secrets are interpolated, everything else stays literal', () => {
    const src = 'a ${HOME} %{ if x } $((1+1)) {{secret:db_pw}} $$ %%';
    const tpl = toTerraformTemplate(src);
    expect(tpl).toBe('a $${HOME} %%{ if x } $((1+1)) ${db_pw} $$ %%');
    expect(templateVariables(tpl)).toEqual(['db_pw']);
    expect(applyTerraformTemplate(tpl, { db_pw: 'pw' })).toBe('a ${HOME} %{ if x } $((1+1)) pw $$ %%');
    expect(() => applyTerraformTemplate(tpl, {})).toThrow(/does not contain key "db_pw"/);
    expect(() => applyTerraformTemplate('${var.x}', {})).toThrow(/unexpected interpolation/);
  });
});
