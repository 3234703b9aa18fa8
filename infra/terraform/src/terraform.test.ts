/**
 * The Terraform code through the real `terraform` binary, without a network: `fmt -check`,
 * `init` + `validate` (every environment whose providers are at hand: local and dev need none,
 * prod needs hetznercloud/hcloud and cloudflare/cloudflare), `apply` of the local environment (no lab) and `plan` of dev,
 * and the user data Terraform's own `templatefile()` makes of every rendered host.
 *
 * Everything runs in a temporary copy of modules/, environments/ and scripts/ with freshly
 * rendered provisioning, so the checkout gets no .terraform folders or state. Terraform cannot
 * reach the internet from here: the CLI configuration installs providers only from a filesystem
 * mirror (empty, or DSM_TF_PROVIDER_MIRROR) and the version check is off. A missing terraform
 * binary fails (README: where it comes from).
 */
import { execFile } from 'node:child_process';
import { appendFileSync, cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listEnvironments, loadEnvSpec, TERRAFORM_DIR } from './inputs.ts';
import type { Manifest } from './manifest.ts';
import { renderEnvironment, writeRendered } from './render-environment.ts';
import { applyTerraformTemplate } from './template.ts';

const TERRAFORM = process.env.DSM_TERRAFORM || 'terraform';
const MIRROR = process.env.DSM_TF_PROVIDER_MIRROR || '';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

let root: string;
let env: NodeJS.ProcessEnv;

function tf(cwd: string, args: string[], timeoutMs = 120_000): Promise<Run> {
  return new Promise((resolve, reject) => {
    execFile(
      TERRAFORM,
      [...args],
      { cwd, env, timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 },
      (err, stdout, stderr) => {
        if (err && (err as NodeJS.ErrnoException).code === 'ENOENT')
          return reject(
            new Error(
              `no terraform binary (${TERRAFORM}) on PATH: install HashiCorp's terraform >= 1.5 (infra/terraform/README.md)`,
            ),
          );
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

async function tfOk(cwd: string, args: string[]): Promise<string> {
  const r = await tf(cwd, args);
  if (r.code !== 0)
    throw new Error(`terraform ${args.join(' ')} (in ${cwd}) exited ${r.code}:\n${r.stderr}${r.stdout}`);
  return r.stdout;
}

const secretValue = (name: string) => `${name.replace(/_/g, '-')}.${'x'.repeat(40)}`;
const secretsOf = (m: Manifest) => Object.fromEntries(m.secrets.map((s) => [s, secretValue(s)]));
const envDir = (e: string) => join(root, 'environments', e);

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'dsm-tf-cli-'));
  for (const d of ['modules', 'environments', 'scripts'])
    cpSync(join(TERRAFORM_DIR, d), join(root, d), {
      recursive: true,
      filter: (src) => !/\/\.terraform(\/|$)|\.tfstate|\.tfvars/.test(src),
    });
  for (const e of listEnvironments()) writeRendered(e, join(root, 'rendered'));
  const mirror = MIRROR || join(root, 'empty-provider-mirror');
  mkdirSync(mirror, { recursive: true });
  writeFileSync(
    join(root, 'cli.tfrc'),
    `disable_checkpoint = true\nprovider_installation {\n  filesystem_mirror {\n    path    = ${JSON.stringify(mirror)}\n    include = ["*/*/*"]\n  }\n}\n`,
  );
  env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('TF_')));
  Object.assign(env, {
    TF_CLI_CONFIG_FILE: join(root, 'cli.tfrc'),
    CHECKPOINT_DISABLE: '1',
    TF_IN_AUTOMATION: '1',
    TF_INPUT: '0',
  });
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('terraform binary (offline)', () => {
  it('terraform fmt -check -recursive: every .tf file as terraform formats it; a bad one fails', async () => {
    await tfOk(root, ['fmt', '-check', '-recursive', '-diff', 'modules', 'environments']);
    mkdirSync(join(root, 'unformatted'));
    writeFileSync(join(root, 'unformatted', 'main.tf'), 'variable "x" {\ntype=string\n}\n');
    const r = await tf(root, ['fmt', '-check', 'unformatted']);
    expect(r.code).not.toBe(0);
    expect(r.stdout).toContain('main.tf');
  });

  it('init + validate: local and dev (no provider needed)', async () => {
    for (const e of ['local', 'dev']) {
      await tfOk(envDir(e), ['init', '-backend=false', '-input=false', '-no-color']);
      expect(await tfOk(envDir(e), ['validate', '-no-color'])).toContain('The configuration is valid');
    }
  });

  it('prod: init needs hetznercloud/hcloud and cloudflare/cloudflare, which are not downloaded (validate only with a provider mirror)', async () => {
    const r = await tf(envDir('prod'), ['init', '-backend=false', '-input=false', '-no-color']);
    if (!MIRROR) {
      // proof that nothing was fetched: the only installation method is the (empty) mirror
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/hetznercloud\/hcloud[\s\S]*not found in any of the search locations/);
      expect(r.stderr).toMatch(
        /cloudflare\/cloudflare: provider registry\.terraform\.io\/cloudflare\/cloudflare/,
      );
      return;
    }
    expect(r.code, r.stderr).toBe(0);
    expect(await tfOk(envDir('prod'), ['validate', '-no-color'])).toContain('The configuration is valid');
  });

  it('local: apply without the lab; the outputs are the rendered manifest’s', async () => {
    const cwd = envDir('local');
    await tfOk(cwd, ['init', '-backend=false', '-input=false', '-no-color']);
    await tfOk(cwd, ['apply', '-auto-approve', '-input=false', '-no-color', '-var', 'start_lab=false']);
    const out = JSON.parse(await tfOk(cwd, ['output', '-json'])) as Record<string, { value: unknown }>;
    const { spec, inputSha256 } = loadEnvSpec('local');
    const m = renderEnvironment(spec, inputSha256).manifest;
    expect(out.tracker_vip?.value).toBe(m.trackers.vipAddress);
    expect(out.tracker_endpoint?.value).toBe(m.trackers.endpoint);
    expect(out.id_vip?.value).toBe(m.idServers.vipAddress);
    expect(out.id_endpoint?.value).toBe(m.idServers.endpoint);
    expect(out.gateway_url?.value ?? null).toBeNull(); // null outputs are not kept in the state
    expect(out.rendered_dir?.value).toBe(join(root, 'rendered', 'local'));
    expect(out.storage_groups?.value).toEqual(
      Object.fromEntries(
        Object.entries(m.storageGroups).map(([g, s]) => [
          g,
          {
            hosts: s.hosts,
            volume: s.volume,
            mount_point: s.mountPoint,
            storage_addresses: s.storageAddresses,
            brick_size_gb: s.brickSizeGb,
          },
        ]),
      ),
    );
  });

  it('local: the plan stops when dsm.json changed after rendering', async () => {
    const cwd = envDir('local');
    const file = join(cwd, 'dsm.json');
    const before = readFileSync(file);
    appendFileSync(file, ' ');
    try {
      const r = await tf(cwd, ['plan', '-input=false', '-no-color', '-var', 'start_lab=false']);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain('was rendered from another');
    } finally {
      writeFileSync(file, before);
    }
  });

  it('vip-pair: role picks the manifest section (tracker hosts as the id pair stop the plan); an unknown role is refused', async () => {
    const call = (role: string) =>
      `locals {\n  spec = jsondecode(file("\${path.module}/../environments/local/dsm.json"))\n}\n\nmodule "pair" {\n  source        = "../modules/vip-pair"\n  role          = "${role}"\n  hosts         = local.spec.trackers.hosts\n  vip           = local.spec.trackers.vip\n  port          = local.spec.trackers.port\n  rendered_dir  = "\${path.module}/../rendered/local"\n  inputs_sha256 = filesha256("\${path.module}/../environments/local/dsm.json")\n}\n\noutput "endpoint" {\n  value = module.pair.endpoint\n}\n\noutput "user_data" {\n  value     = module.pair.user_data\n  sensitive = true\n}\n`;
    const plan = async (role: string) => {
      const cwd = join(root, `vip-pair-${role}`);
      mkdirSync(cwd);
      writeFileSync(join(cwd, 'main.tf'), call(role));
      await tfOk(cwd, ['init', '-backend=false', '-input=false', '-no-color']);
      return tf(cwd, ['plan', '-input=false', '-no-color']);
    };
    const ok = await plan('tracker');
    expect(ok.code, ok.stderr).toBe(0);
    const wrong = await plan('id');
    expect(wrong.code).not.toBe(0);
    expect(wrong.stderr).toContain('differ from idServers in the rendered manifest');
    const bad = await plan('gateway');
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain('role must be "tracker" or "id"');
  });

  it('dev: plans one provisioning per host; a missing secret stops the plan', async () => {
    const cwd = envDir('dev');
    await tfOk(cwd, ['init', '-backend=false', '-input=false', '-no-color']);
    const { spec, inputSha256 } = loadEnvSpec('dev');
    const m = renderEnvironment(spec, inputSha256).manifest;
    expect(m.secrets.length).toBeGreaterThan(0);
    writeFileSync(join(cwd, 'ok.tfvars.json'), JSON.stringify({ secrets: secretsOf(m) }));
    const common = ['plan', '-input=false', '-no-color', '-var', 'ssh_private_key_file=/dev/null'];
    const plan = await tfOk(cwd, [...common, '-var-file=ok.tfvars.json']);
    const n = Object.keys(m.hosts).length;
    expect(plan).toContain(`Plan: ${n} to add, 0 to change, 0 to destroy.`);
    for (const h of Object.keys(m.hosts))
      expect(plan).toContain(`terraform_data.host["${h}"] will be created`);
    const r = await tf(cwd, [...common, '-var', 'secrets={}']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('lacks a name the rendered files use');
  });
});

/**
 * A root module that calls the provider-neutral modules as the environment does and prints their
 * user data (`terraform output -json` prints sensitive values): what Terraform hands each VM, through its own templatefile().
 */
function userDataRoot(e: string, m: Manifest): string {
  const common = (extra = '') =>
    `  rendered_dir  = "\${path.module}/../rendered/${e}"\n  inputs_sha256 = filesha256("\${path.module}/../environments/${e}/dsm.json")\n  secrets       = var.secrets\n${extra}`;
  const mods = [
    `module "trackers" {\n  source = "../modules/vip-pair"\n  role   = "tracker"\n  hosts  = local.spec.trackers.hosts\n  vip    = local.spec.trackers.vip\n  port   = local.spec.trackers.port\n${common()}}`,
    `module "id_servers" {\n  source = "../modules/vip-pair"\n  role   = "id"\n  hosts  = local.spec.idServers.hosts\n  vip    = local.spec.idServers.vip\n  port   = local.spec.idServers.port\n${common()}}`,
    `module "storage_group" {\n  source   = "../modules/storage-group"\n  for_each = local.spec.storageGroups\n  name     = each.key\n  hosts    = each.value.hosts\n  port     = each.value.port\n${common()}}`,
  ];
  const parts = [
    'module.trackers.user_data',
    'module.id_servers.user_data',
    'merge([for g in module.storage_group : g.user_data]...)',
  ];
  if (m.gateways) {
    mods.push(
      `module "gateways" {\n  source = "../modules/gateway"\n  hosts  = local.spec.gateways.hosts\n  port   = local.spec.gateways.port\n${common()}}`,
    );
    parts.push('module.gateways.user_data');
  }
  if (m.data) {
    mods.push(
      `module "data" {\n  source = "../modules/data"\n  hosts  = local.spec.data.hosts\n${common()}}`,
    );
    parts.push('module.data.user_data');
  }
  return `variable "secrets" {
  type      = map(string)
  sensitive = true
}

locals {
  spec = jsondecode(file("\${path.module}/../environments/${e}/dsm.json"))
}

${mods.join('\n\n')}

output "user_data" {
  value     = merge(${parts.join(', ')})
  sensitive = true
}
`;
}

describe.each(listEnvironments())('environment %s through terraform', (e) => {
  it('the modules’ user data (Terraform’s templatefile) is byte for byte the rendered template with the secrets filled in', async () => {
    const { spec, inputSha256 } = loadEnvSpec(e);
    const r = renderEnvironment(spec, inputSha256);
    const cwd = join(root, `user-data-${e}`);
    mkdirSync(cwd);
    writeFileSync(join(cwd, 'main.tf'), userDataRoot(e, r.manifest));
    writeFileSync(join(cwd, 'secrets.tfvars.json'), JSON.stringify({ secrets: secretsOf(r.manifest) }));
    await tfOk(cwd, ['init', '-backend=false', '-input=false', '-no-color']);
    await tfOk(cwd, ['apply', '-auto-approve', '-input=false', '-no-color', '-var-file=secrets.tfvars.json']);
    const got = JSON.parse(await tfOk(cwd, ['output', '-json', 'user_data'])) as Record<string, string>;
    expect(Object.keys(got).sort()).toEqual(Object.keys(r.manifest.hosts).sort());
    for (const h of Object.keys(r.manifest.hosts)) {
      const want = applyTerraformTemplate(r.files.get(`${h}/user-data.yaml.tftpl`)!, secretsOf(r.manifest));
      expect(got[h] === want, `${e}/${h}: terraform's user data differs from the rendered template`).toBe(
        true,
      );
    }
  });
});
