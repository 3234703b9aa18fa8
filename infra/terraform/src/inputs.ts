/**
 * The renderer's inputs: where the environments and the rendered folders are, an environment's
 * dsm.json (checked against src/spec.ts, with its SHA-256), its hosts with their roles, and the
 * Node and dsm checkout a host runs.
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type EnvSpec, parseEnvSpec } from './spec.ts';

export const TERRAFORM_DIR = fileURLToPath(new URL('..', import.meta.url));
export const REPO_ROOT = fileURLToPath(new URL('../../..', import.meta.url));
export const ENVIRONMENTS_DIR = join(TERRAFORM_DIR, 'environments');
export const RENDERED_DIR = join(TERRAFORM_DIR, 'rendered');

/**
 * The renderer as every rendered file names it (user data header, manifest): the command's entry.
 * Changing it changes every rendered file.
 */
export const RENDERER = 'infra/terraform/src/render-provisioning.ts';

export type Role = 'tracker' | 'id' | 'storage' | 'gateway' | 'data';
export interface HostInfo {
  name: string;
  address: string;
  role: Role;
  /** Storage group of a storage host. */
  group?: string;
}

export function loadEnvSpec(env: string): { spec: EnvSpec; inputSha256: string; file: string } {
  const file = join(ENVIRONMENTS_DIR, env, 'dsm.json');
  const bytes = readFileSync(file);
  const spec = parseEnvSpec(JSON.parse(bytes.toString('utf8')), file);
  if (spec.environment !== env)
    throw new Error(`${file}: environment is "${spec.environment}", not "${env}"`);
  return { spec, inputSha256: createHash('sha256').update(bytes).digest('hex'), file };
}

export function listEnvironments(): string[] {
  return readdirSync(ENVIRONMENTS_DIR)
    .filter((d) => existsSync(join(ENVIRONMENTS_DIR, d, 'dsm.json')))
    .sort();
}

export function hostsOf(spec: EnvSpec): HostInfo[] {
  const out: HostInfo[] = [];
  const add = (m: Record<string, string>, role: Role, group?: string) => {
    for (const [name, address] of Object.entries(m)) out.push({ name, address, role, group });
  };
  add(spec.trackers.hosts, 'tracker');
  add(spec.idServers.hosts, 'id');
  for (const [g, s] of Object.entries(spec.storageGroups)) add(s.hosts, 'storage', g);
  if (spec.gateways) add(spec.gateways.hosts, 'gateway');
  if (spec.data) add(spec.data.hosts, 'data');
  const seenName = new Map<string, HostInfo>();
  const seenAddr = new Map<string, HostInfo>();
  for (const h of out) {
    const a = seenName.get(h.name);
    if (a) throw new Error(`host "${h.name}" is both a ${a.role} and a ${h.role} host: one role per host`);
    const b = seenAddr.get(h.address);
    if (b) throw new Error(`hosts "${b.name}" and "${h.name}" share the address ${h.address}`);
    seenName.set(h.name, h);
    seenAddr.set(h.address, h);
  }
  return out;
}

/**
 * Node binary, dsm checkout and the `dsm` entry a host runs. Installed hosts run the bundle the
 * install step builds (`dist/dsm.mjs`: no TypeScript loader, each role loads only its own
 * chunks; docs/performance.md); `install: null` = the Node and checkout that render, from source.
 */
export function runtimeOf(spec: EnvSpec): { node: string; dsm: string; entry: string } {
  if (!spec.install) {
    const dsm = REPO_ROOT.replace(/\/$/, '');
    return { node: process.execPath, dsm, entry: `${dsm}/cli/bin/dsm.js` };
  }
  const dsm = `${spec.install.prefix}/current`;
  return { node: `${spec.install.nodeDir}/bin/node`, dsm, entry: `${dsm}/dist/dsm.mjs` };
}

export const vipAddress = (vip: string) => vip.split('/')[0] as string;
export const fill = (s: string, v: Record<string, string>) =>
  s.replace(/\{(host|volume)\}/g, (_m, k: string) => v[k] ?? '');
