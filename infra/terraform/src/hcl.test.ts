/**
 * Offline checks of the Terraform code that need no terraform binary (src/terraform.test.ts runs
 * the binary: fmt, validate, plan and apply without a network): every .tf file
 * parses (HCL parser of HashiCorp's hcl library, compiled to wasm) and is formatted as hclwrite
 * formats it (what `terraform fmt` is built on); every variable and output has a description
 * and is in its README; module calls pass only declared variables, all required ones, and use
 * only declared outputs; `var.x` references are declared.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { format } from '@cdktf/hcl-tools';
import { parse } from '@cdktf/hcl2json';
import { describe, expect, it } from 'vitest';
import { TERRAFORM_DIR } from './inputs.ts';

type Block = Record<string, unknown>;
type HclJson = Record<string, Record<string, Block[]> | undefined>;

function tfFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    if (e.isDirectory()) return e.name === 'rendered' || e.name.startsWith('.') ? [] : tfFiles(p);
    return e.name.endsWith('.tf') ? [p] : [];
  });
}

const FILES = tfFiles(TERRAFORM_DIR);
const MODULES_DIR = join(TERRAFORM_DIR, 'modules');
const MODULES = readdirSync(MODULES_DIR).sort();
const ENVIRONMENTS = readdirSync(join(TERRAFORM_DIR, 'environments')).sort();

const parsed = new Map<string, Promise<HclJson>>();
const hcl = (file: string) => {
  let p = parsed.get(file);
  if (!p) {
    p = parse(file, readFileSync(file, 'utf8')) as Promise<HclJson>;
    parsed.set(file, p);
  }
  return p;
};

/** variable/output/module/resource blocks of every .tf file in a folder. */
async function folder(dir: string) {
  const out = {
    variable: new Map<string, Block>(),
    output: new Map<string, Block>(),
    module: new Map<string, Block>(),
  };
  for (const f of FILES.filter((x) => resolve(x, '..') === resolve(dir))) {
    const j = await hcl(f);
    for (const kind of ['variable', 'output', 'module'] as const)
      for (const [name, blocks] of Object.entries(j[kind] ?? {})) {
        expect(out[kind].has(name), `${kind} "${name}" declared twice in ${dir}`).toBe(false);
        out[kind].set(name, (blocks as Block[])[0] as Block);
      }
  }
  return out;
}

const text = (dir: string) =>
  FILES.filter((x) => resolve(x, '..') === resolve(dir))
    .map((f) => readFileSync(f, 'utf8'))
    .join('\n');

describe('Terraform files', () => {
  it('finds the modules and environments', () => {
    expect(MODULES).toEqual(['cluster', 'data', 'gateway', 'storage-group', 'vip-pair', 'worker']);
    expect(ENVIRONMENTS).toEqual(['dev', 'local', 'prod']);
    for (const d of [
      ...MODULES.map((m) => join(MODULES_DIR, m)),
      ...ENVIRONMENTS.map((e) => join(TERRAFORM_DIR, 'environments', e)),
    ])
      for (const f of ['main.tf', 'variables.tf', 'outputs.tf', 'README.md'])
        expect(existsSync(join(d, f)), `${relative(TERRAFORM_DIR, d)}/${f}`).toBe(true);
  });

  it('every .tf file parses and is formatted (hclwrite.Format, as terraform fmt)', async () => {
    expect(FILES.length).toBeGreaterThanOrEqual(21);
    for (const f of FILES) {
      const src = readFileSync(f, 'utf8');
      await expect(hcl(f), relative(TERRAFORM_DIR, f)).resolves.toBeTypeOf('object');
      expect(await format(src), `${relative(TERRAFORM_DIR, f)} is not formatted`).toBe(src);
    }
  });

  it('a syntax error is reported (the parser is not lenient)', async () => {
    await expect(parse('bad.tf', 'variable "x" {\n  type = string\n')).rejects.toThrow(
      /Unclosed configuration block/,
    );
  });
});

describe.each([
  ...MODULES.map((m) => ({ kind: 'module', dir: join(MODULES_DIR, m) })),
  ...ENVIRONMENTS.map((e) => ({ kind: 'environment', dir: join(TERRAFORM_DIR, 'environments', e) })),
])('$kind $dir', ({ dir }) => {
  it('every variable and output has a description and is documented in the README', async () => {
    const f = await folder(dir);
    const readme = readFileSync(join(dir, 'README.md'), 'utf8');
    for (const kind of ['variable', 'output'] as const)
      for (const [name, b] of f[kind]) {
        expect(
          typeof b.description === 'string' && b.description.length > 10,
          `${kind} ${name}: description`,
        ).toBe(true);
        expect(readme, `${kind} ${name} is not in ${relative(TERRAFORM_DIR, dir)}/README.md`).toMatch(
          new RegExp(`^\\|\\s*\`${name}\``, 'm'),
        );
      }
  });

  it('refers only to declared variables', async () => {
    const f = await folder(dir);
    for (const m of text(dir).matchAll(/\bvar\.([A-Za-z0-9_]+)/g))
      expect(f.variable.has(m[1] as string), `var.${m[1]} is not declared`).toBe(true);
  });

  it('module calls pass declared variables, every required one, and use declared outputs', async () => {
    const f = await folder(dir);
    const calls = new Map<string, string>();
    for (const [name, b] of f.module) {
      const src = resolve(dir, b.source as string);
      expect(existsSync(join(src, 'main.tf')), `module ${name}: source ${b.source}`).toBe(true);
      calls.set(name, src);
      const m = await folder(src);
      const args = Object.keys(b).filter(
        (k) => !['source', 'for_each', 'count', 'depends_on', 'providers'].includes(k),
      );
      for (const a of args)
        expect(m.variable.has(a), `module ${name}: no variable "${a}" in ${b.source}`).toBe(true);
      for (const [v, vb] of m.variable)
        if (!('default' in vb))
          expect(args, `module ${name}: required variable "${v}" not passed`).toContain(v);
    }
    for (const r of text(dir).matchAll(/\bmodule\.([a-z_]+)(?:\[[^\]]*\])?\.([a-z_]+)/g)) {
      const src = calls.get(r[1] as string);
      expect(src, `module.${r[1]} is not called here`).toBeDefined();
      expect(
        (await folder(src as string)).output.has(r[2] as string),
        `module.${r[1]}.${r[2]}: no such output`,
      ).toBe(true);
    }
  });
});
