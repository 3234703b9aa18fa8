/**
 * modules/worker (the gateway as a Cloudflare Worker) and its use by environments/prod, offline:
 * the cloudflare provider cannot be downloaded here, so the module is checked
 *
 * - against gateway/wrangler.toml, read at test time with wrangler's own config reader (what
 *   `wrangler deploy` uploads): compatibility date and flags, script name, workers_dev, crons,
 *   every [vars] binding with the type wrangler gives it, the Durable Object bindings and
 *   migrations, the secrets wrangler.toml tells to `wrangler secret put`; and against
 *   `WorkerEnv` of gateway/src/worker-config.ts (every binding is one the Worker reads);
 * - by the terraform binary on a provider-free copy (its variables.tf and the locals of its
 *   main.tf, the resources cut off): the bindings and migrations it computes, and its variable
 *   validations refusing bad inputs;
 * - for sensitivity: every variable that feeds a secret_text binding is `sensitive`;
 * - in prod: the call (off by default), trackers from the cluster module's tracker hosts at the
 *   VMs' public addresses, the secrets from `secrets`, the provider pinned as in the module.
 *
 * hcl.test.ts parses and format-checks these files like every other module.
 */
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from '@cdktf/hcl2json';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { unstable_readConfig } from 'wrangler';
import { REPO_ROOT, TERRAFORM_DIR } from './inputs.ts';

type Block = Record<string, unknown>;
type HclJson = Record<string, Record<string, Block[]> | undefined>;

const MODULE_DIR = join(TERRAFORM_DIR, 'modules', 'worker');
const PROD_DIR = join(TERRAFORM_DIR, 'environments', 'prod');
const GATEWAY_DIR = join(REPO_ROOT, 'gateway');
const TERRAFORM = process.env.DSM_TERRAFORM || 'terraform';

const read = (f: string) => readFileSync(f, 'utf8');
const hcl = async (f: string) => (await parse(f, read(f))) as HclJson;
const first = (j: HclJson, kind: string, name: string) => j[kind]?.[name]?.[0] as Block | undefined;

/** gateway/wrangler.toml as wrangler deploy reads it. */
function wranglerConfig() {
  return unstable_readConfig({ config: join(GATEWAY_DIR, 'wrangler.toml') }, { hideWarnings: true });
}

/**
 * Binding names the Worker declares: the keys of `interface WorkerEnv` in
 * gateway/src/worker-config.ts and `NAME?: …` / `NAME: …` properties in the other non-test
 * sources (a Durable Object binding may be typed next to its class).
 */
function workerBindingNames(): string[] {
  const src = read(join(GATEWAY_DIR, 'src', 'worker-config.ts'));
  const body = /export interface WorkerEnv \{([\s\S]*?)\n\}/.exec(src)?.[1];
  expect(body, 'interface WorkerEnv in worker-config.ts').toBeDefined();
  const names = new Set(
    [...(body as string).matchAll(/^\s+([A-Z][A-Z0-9_]*)\??:/gm)].map((m) => m[1] as string),
  );
  const dir = join(GATEWAY_DIR, 'src');
  for (const f of readdirSync(dir).filter((x) => x.endsWith('.ts') && !x.endsWith('.test.ts')))
    for (const m of read(join(dir, f)).matchAll(/^\s+(DSM_[A-Z0-9_]+)\??:/gm)) names.add(m[1] as string);
  return [...names];
}

let variables: Record<string, Block>;
beforeAll(async () => {
  const j = await hcl(join(MODULE_DIR, 'variables.tf'));
  variables = Object.fromEntries(
    Object.entries(j.variable ?? {}).map(([k, v]) => [k, (v as Block[])[0] as Block]),
  );
});

describe('modules/worker agrees with gateway/wrangler.toml', () => {
  it('compatibility date and flags, script name, workers_dev and crons', () => {
    const w = wranglerConfig();
    expect(variables.compatibility_date?.default, 'compatibility_date').toBe(w.compatibility_date);
    expect(variables.compatibility_flags?.default, 'compatibility_flags').toEqual(w.compatibility_flags);
    expect(variables.script_name?.default, 'script_name = wrangler name').toBe(w.name);
    expect(variables.workers_dev?.default, 'workers_dev').toBe(w.workers_dev ?? true);
    expect(variables.sweep_crons?.default, 'sweep_crons = [triggers] crons').toEqual(w.triggers?.crons ?? []);
  });

  it('[vars]: the same names, the type wrangler uploads them with, DSM_GATEWAY the same table', () => {
    const w = wranglerConfig();
    const vars = w.vars as Record<string, unknown>;
    expect(Object.keys(vars).sort()).toEqual(['DSM_GATEWAY', 'DSM_LOG_LEVEL', 'DSM_TRACKERS']);
    // the table is the module's default gateway_config (what an environment starts from)
    expect(variables.gateway_config?.default).toEqual(vars.DSM_GATEWAY);
    expect(variables.log_level?.default).toBe(vars.DSM_LOG_LEVEL);
  });

  it('Durable Object bindings and migrations are those of wrangler.toml', () => {
    const w = wranglerConfig();
    const bindings = Object.fromEntries(
      w.durable_objects.bindings.map((b: { name: string; class_name: string }) => [b.name, b.class_name]),
    );
    expect(
      bindings,
      'gateway/wrangler.toml [[durable_objects.bindings]] (issue 9 item 1: DSM_TUS) = the module default durable_objects',
    ).toEqual(variables.durable_objects?.default);
    const migrations = (w.migrations as Record<string, unknown>[]).map((m) => ({
      tag: m.tag,
      ...Object.fromEntries(
        ['new_sqlite_classes', 'new_classes', 'deleted_classes', 'renamed_classes']
          .filter((k) => Array.isArray(m[k]) && (m[k] as unknown[]).length > 0)
          .map((k) => [k, m[k]]),
      ),
    }));
    expect(migrations, 'gateway/wrangler.toml [[migrations]] = the module default migrations').toEqual(
      variables.migrations?.default,
    );
  });
});

// ---- the module's locals and validations through terraform, without the provider -------------

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

let root: string;
let tfEnv: NodeJS.ProcessEnv;
let bundle: string;

function tf(cwd: string, args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    execFile(
      TERRAFORM,
      args,
      { cwd, env: tfEnv, timeout: 120_000, maxBuffer: 16 * 1024 * 1024 },
      (err, stdout, stderr) => {
        if (err && (err as NodeJS.ErrnoException).code === 'ENOENT')
          return reject(new Error(`no terraform binary (${TERRAFORM}): see infra/terraform/README.md`));
        resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
      },
    );
  });
}

/** The module's main.tf up to its first resource: the terraform block and the locals. */
function localsOfMain(): string {
  const src = read(join(MODULE_DIR, 'main.tf'));
  const cut = src.indexOf('\nresource "');
  expect(cut, 'main.tf has resources after its locals').toBeGreaterThan(0);
  const head = src.slice(0, cut);
  expect(head).toMatch(/\nlocals \{/);
  // the provider requirement goes too: nothing in the locals needs it
  return head.replace(/^terraform \{[\s\S]*?\n\}\n/m, '');
}

/** The module's outputs that need no resource (the others name a cloudflare_ resource). */
function outputsWithoutResources(): string {
  const blocks = read(join(MODULE_DIR, 'outputs.tf')).split(/\n(?=output ")/);
  const kept = blocks.filter((b) => !b.includes('cloudflare_'));
  expect(kept.map((b) => /^output "([a-z0-9_]+)"/.exec(b)?.[1])).toEqual(
    expect.arrayContaining(['bindings', 'migration_tag', 'trackers', 'durable_objects', 'bundle_sha256']),
  );
  return kept.join('\n').replace(/^output "/gm, 'output "module_');
}

const PROBE_OUTPUTS = `
output "bindings" {
  value     = [for b in local.bindings : { name = b.name, type = b.type, text = try(b.text, null), json = try(b.json, null), class_name = try(b.class_name, null) }]
  sensitive = true
}

output "migrations" {
  value = local.migration_steps
}
`;

const KEY = 'k'.repeat(40);
const base = (): Record<string, unknown> => ({
  account_id: '0123456789abcdef0123456789abcdef',
  zone_id: 'fedcba9876543210fedcba9876543210',
  routes: ['media.example.com/*'],
  bundle_file: bundle,
  trackers: ['203.0.113.11:21000', '203.0.113.12:21000'],
  auth_hs256_keys: { k1: KEY },
});

/** `terraform apply` of the probe with these variables (a tfvars.json file). */
async function probe(
  vars: Record<string, unknown>,
): Promise<Run & { out?: Record<string, { value: unknown }> }> {
  writeFileSync(join(root, 'probe', 'terraform.tfvars.json'), JSON.stringify(vars));
  rmSync(join(root, 'probe', 'terraform.tfstate'), { force: true });
  const r = await tf(join(root, 'probe'), ['apply', '-auto-approve', '-input=false', '-no-color']);
  if (r.code !== 0) return r;
  const o = await tf(join(root, 'probe'), ['output', '-json']);
  return { ...r, out: JSON.parse(o.stdout) };
}

describe('modules/worker through terraform (locals and validations, provider cut off)', () => {
  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'dsm-tf-worker-'));
    mkdirSync(join(root, 'probe'));
    mkdirSync(join(root, 'mirror'));
    bundle = join(root, 'worker.js');
    writeFileSync(bundle, 'export default { fetch() { return new Response("ok"); } };\n');
    writeFileSync(join(root, 'probe', 'variables.tf'), read(join(MODULE_DIR, 'variables.tf')));
    writeFileSync(join(root, 'probe', 'main.tf'), localsOfMain() + PROBE_OUTPUTS);
    writeFileSync(join(root, 'probe', 'outputs.tf'), outputsWithoutResources());
    writeFileSync(
      join(root, 'cli.tfrc'),
      `disable_checkpoint = true\nprovider_installation {\n  filesystem_mirror {\n    path    = ${JSON.stringify(join(root, 'mirror'))}\n    include = ["*/*/*"]\n  }\n}\n`,
    );
    tfEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('TF_')));
    Object.assign(tfEnv, {
      TF_CLI_CONFIG_FILE: join(root, 'cli.tfrc'),
      CHECKPOINT_DISABLE: '1',
      TF_INPUT: '0',
    });
    const init = await tf(join(root, 'probe'), ['init', '-backend=false', '-input=false', '-no-color']);
    expect(init.code, init.stderr).toBe(0);
  }, 120_000);
  afterAll(() => {
    if (root) rmSync(root, { recursive: true, force: true });
  });

  it('the bindings: wrangler.toml’s vars with their types, DSM_TUS, the secrets only when set; every name one WorkerEnv reads', async () => {
    const r = await probe(base());
    expect(r.code, r.stderr).toBe(0);
    const bindings = r.out?.bindings?.value as {
      name: string;
      type: string;
      text: string | null;
      json: string | null;
      class_name: string | null;
    }[];
    const byName = new Map(bindings.map((b) => [b.name, b]));
    expect(byName.size, 'no binding twice').toBe(bindings.length);
    const w = wranglerConfig();
    for (const [name, value] of Object.entries(w.vars as Record<string, unknown>)) {
      const b = byName.get(name);
      expect(b, `[vars] ${name} is a binding`).toBeDefined();
      // wrangler uploads a string var as plain_text and a table as json
      expect(b?.type, `${name}: type`).toBe(typeof value === 'string' ? 'plain_text' : 'json');
    }
    expect(JSON.parse(byName.get('DSM_GATEWAY')?.json as string)).toEqual(w.vars.DSM_GATEWAY);
    expect(byName.get('DSM_TRACKERS')?.text).toBe('203.0.113.11:21000,203.0.113.12:21000');
    for (const b of w.durable_objects.bindings as { name: string; class_name: string }[])
      expect(byName.get(b.name), `durable object ${b.name}`).toMatchObject({
        type: 'durable_object_namespace',
        class_name: b.class_name,
      });
    // the tus state's namespace, whatever wrangler.toml has today
    expect(byName.get('DSM_TUS')).toMatchObject({
      type: 'durable_object_namespace',
      class_name: (variables.durable_objects?.default as Record<string, string> | undefined)?.DSM_TUS,
    });
    // wrangler.toml tells which secrets to `wrangler secret put`: here they are secret_text
    const told = [
      ...read(join(GATEWAY_DIR, 'wrangler.toml')).matchAll(/wrangler secret put (DSM_[A-Z0-9_]+)/g),
    ].map((m) => m[1] as string);
    expect(told.length).toBeGreaterThanOrEqual(3);
    expect(byName.get('DSM_AUTH_HS256_KEYS')).toMatchObject({
      type: 'secret_text',
      text: JSON.stringify({ k1: KEY }),
    });
    // optional secrets are absent until set
    for (const n of ['DSM_SIGNING_KEYS', 'DSM_ADMIN_TOKEN', 'DSM_CLUSTER_KEY', 'DSM_PUBLIC_URL'])
      expect(byName.has(n), n).toBe(false);
    const all = await probe({
      ...base(),
      signing_keys: { s1: 's'.repeat(20) },
      admin_token: 'a'.repeat(32),
      cluster_key: 'c'.repeat(32),
      public_url: 'https://media.example.com',
    });
    expect(all.code, all.stderr).toBe(0);
    const full = all.out?.bindings?.value as { name: string; type: string; text: string | null }[];
    for (const n of told)
      expect(
        full.find((b) => b.name === n),
        `${n} (wrangler secret put in wrangler.toml)`,
      ).toMatchObject({ type: 'secret_text' });
    expect(full.find((b) => b.name === 'DSM_CLUSTER_KEY')).toMatchObject({
      type: 'secret_text',
      text: 'c'.repeat(32),
    });
    expect(full.find((b) => b.name === 'DSM_PUBLIC_URL')).toMatchObject({
      type: 'plain_text',
      text: 'https://media.example.com',
    });
    // the module's own outputs (those without a resource): names and types only, not sensitive
    expect(all.out?.module_bindings).toMatchObject({ sensitive: false });
    expect(all.out?.module_bindings?.value).toEqual(Object.fromEntries(full.map((b) => [b.name, b.type])));
    expect(all.out?.module_migration_tag?.value).toBe('v1');
    expect(all.out?.module_trackers?.value).toBe('203.0.113.11:21000,203.0.113.12:21000');
    const env = workerBindingNames();
    for (const b of full)
      expect(
        env,
        `binding ${b.name} is declared by the Worker (WorkerEnv or a DSM_ property in gateway/src)`,
      ).toContain(b.name);
  }, 60_000);

  it('migrations: all of them for a new script, only later ones after migrations_applied, none when current', async () => {
    const fresh = await probe(base());
    expect(fresh.code, fresh.stderr).toBe(0);
    expect(fresh.out?.migrations?.value).toEqual({
      old_tag: null,
      new_tag: 'v1',
      steps: [
        {
          new_sqlite_classes: ['TusStateObject'],
          new_classes: null,
          deleted_classes: null,
          renamed_classes: null,
        },
      ],
    });
    const current = await probe({ ...base(), migrations_applied: 'v1' });
    expect(current.code, current.stderr).toBe(0);
    expect(current.out?.migrations?.value ?? null).toBeNull();
    const later = await probe({
      ...base(),
      migrations: [
        { tag: 'v1', new_sqlite_classes: ['TusStateObject'] },
        { tag: 'v2', renamed_classes: [{ from: 'TusStateObject', to: 'TusState2' }] },
      ],
      migrations_applied: 'v1',
    });
    expect(later.code, later.stderr).toBe(0);
    expect(later.out?.migrations?.value).toEqual({
      old_tag: 'v1',
      new_tag: 'v2',
      steps: [
        {
          new_sqlite_classes: null,
          new_classes: null,
          deleted_classes: null,
          renamed_classes: [{ from: 'TusStateObject', to: 'TusState2' }],
        },
      ],
    });
  }, 60_000);

  it.each([
    ['a private tracker address', { trackers: ['10.0.1.11:21000'] }, /public address/],
    ['a loopback tracker', { trackers: ['127.0.0.1:21000'] }, /public address/],
    ['no route', { routes: [] }, /At least one route/],
    ['a route with a scheme', { routes: ['https://media.example.com/*'] }, /no scheme/],
    ['a short HS256 key', { auth_hs256_keys: { k1: 'short' } }, /at least 32 characters/],
    ['auth mode none', { gateway_config: { auth: { mode: 'none' } } }, /A Worker is public/],
    [
      'trackers in gateway_config',
      { gateway_config: { auth: { mode: 'jwt' }, trackers: ['x:1'] } },
      /may not set/,
    ],
    [
      'a secret in gateway_config',
      { gateway_config: { auth: { mode: 'jwt', hs256Keys: { k1: KEY } } } },
      /may not set/,
    ],
    ['a short cluster key', { cluster_key: 'short' }, /cluster_key is empty or at least 32/],
    ['a missing bundle', { bundle_file: '/nonexistent/worker.js' }, /wrangler deploy --dry-run/],
    ['an unknown applied migration', { migrations_applied: 'v9' }, /one of the migrations' tags/],
    ['a bad account id', { account_id: 'acct' }, /32 lowercase hex/],
    ['a log level', { log_level: 'verbose' }, /debug, info, warn or error/],
  ])(
    'refuses %s',
    async (_what, vars, message) => {
      const r = await probe({ ...base(), ...vars });
      expect(r.code).not.toBe(0);
      expect(r.stderr.replace(/[\s│]+/g, ' ')).toMatch(message);
    },
    60_000,
  );
});

describe('modules/worker: secrets are sensitive', () => {
  it('every variable feeding a secret_text binding is sensitive; the non-secret ones are not', async () => {
    const src = read(join(MODULE_DIR, 'main.tf'));
    const fed = new Set(
      [...src.matchAll(/type = "secret_text", text = ([^}]+)\}/g)].flatMap((m) =>
        [...(m[1] as string).matchAll(/\bvar\.([a-z0-9_]+)/g)].map((v) => v[1] as string),
      ),
    );
    expect([...fed].sort()).toEqual(['admin_token', 'auth_hs256_keys', 'cluster_key', 'signing_keys']);
    for (const [name, v] of Object.entries(variables))
      expect(v.sensitive === true, `variable ${name}: sensitive`).toBe(fed.has(name));
  });
});

describe('environments/prod uses modules/worker beside the VM gateways', () => {
  it('off by default; trackers at the tracker VMs’ public addresses; secrets from `secrets`; the provider pinned as in the module', async () => {
    const main = await hcl(join(PROD_DIR, 'main.tf'));
    const vars = await hcl(join(PROD_DIR, 'variables.tf'));
    const mod = await hcl(join(MODULE_DIR, 'main.tf'));
    const call = first(main, 'module', 'worker_gateway') as Block;
    expect(call, 'module "worker_gateway" in prod').toBeDefined();
    expect(call.source).toBe('../../modules/worker');
    expect(call.count).toBe('${var.worker_gateway.enabled ? 1 : 0}');
    expect((first(vars, 'variable', 'worker_gateway') as Block).default).toEqual({ enabled: false });
    // the trackers: cluster module's tracker hosts → each VM's public IPv4, at the tracker port
    expect(call.trackers).toMatch(/for h in sort\(keys\(module\.cluster\.trackers\.hosts\)\)/);
    expect(call.trackers).toMatch(
      /hcloud_server\.host\[h\]\.ipv4_address\}:\$\{module\.cluster\.trackers\.port\}/,
    );
    expect(call.cluster_key).toBe('${var.secrets["cluster_key"]}');
    expect(call.auth_hs256_keys).toBe('${local.worker_hs256_keys}');
    expect(String((main.locals as unknown as Block[] | undefined)?.[0]?.worker_hs256_keys)).toMatch(
      /var\.secrets\[regex\(/,
    );
    // the VM gateway pool stays (beside, not instead)
    expect(main.resource?.hcloud_load_balancer).toHaveProperty('gateway');
    const pin = (j: HclJson) => {
      const providers = (j.terraform as unknown as Block[] | undefined)?.[0]?.required_providers;
      return (providers as Record<string, Block>[] | undefined)?.[0]?.cloudflare;
    };
    expect(pin(main), 'prod requires cloudflare/cloudflare').toEqual(pin(mod));
    expect(first(main, 'provider', 'cloudflare')).toBeDefined();
    expect((first(vars, 'variable', 'cloudflare_api_token') as Block).sensitive).toBe(true);
  });

  it('the cluster module outputs the tracker hosts and port prod maps to public addresses', async () => {
    const out = await hcl(join(TERRAFORM_DIR, 'modules', 'cluster', 'outputs.tf'));
    expect((first(out, 'output', 'trackers') as Block).value).toEqual({
      hosts: '${module.vip_pair["tracker"].hosts}',
      port: '${module.vip_pair["tracker"].port}',
    });
  });
});
