/**
 * One environment rendered: every host's user data (as a `templatefile()` template), the files
 * that matter one by one (for people and the local lab), and the manifest; `writeRendered`
 * puts them into rendered/<env>/.
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { groupSteps, mountFor } from './ha.ts';
import { hostsOf, loadEnvSpec, RENDERED_DIR } from './inputs.ts';
import { buildManifest, type Manifest } from './manifest.ts';
import { prometheusConfig, scrapeTargets } from './prometheus.ts';
import { type RenderedHost, renderHost } from './render-roles.ts';
import { type EnvSpec, secretsIn } from './spec.ts';
import { toTerraformTemplate } from './template.ts';

export interface RenderedEnvironment {
  /** Relative path under rendered/<env>/ → content. */
  files: Map<string, string>;
  manifest: Manifest;
  hosts: Map<string, RenderedHost>;
}

export function renderEnvironment(spec: EnvSpec, inputSha256: string): RenderedEnvironment {
  const out = new Map<string, string>();
  const hosts = new Map<string, RenderedHost>();
  const secrets = new Set<string>();
  const manifestHosts: Manifest['hosts'] = {};
  for (const h of hostsOf(spec)) {
    const r = renderHost(spec, h);
    hosts.set(h.name, r);
    const names: string[] = [];
    const put = (name: string, content: string) => {
      out.set(`${h.name}/${name}`, content);
      names.push(name);
    };
    put('user-data.yaml.tftpl', toTerraformTemplate(r.userData));
    for (const s of secretsIn(r.userData)) secrets.add(s);
    // the files that matter, one by one, for people and for the local lab
    for (const f of r.files) {
      const base = f.path.split('/').pop() as string;
      if (/\.(json|conf)$/.test(base) || /^dsm-(gluster-steps|mount-group)$/.test(base)) put(base, f.content);
    }
    if (h.role === 'storage') {
      const g = h.group as string;
      put('mount.json', `${JSON.stringify(mountFor(spec, g, h.name), null, 2)}\n`);
      if (Object.keys(spec.storageGroups[g]!.hosts)[0] === h.name)
        put('gluster-steps.json', `${JSON.stringify(groupSteps(spec, g), null, 2)}\n`);
    }
    manifestHosts[h.name] = {
      role: h.role,
      address: h.address,
      ...(h.group ? { group: h.group } : {}),
      files: names,
    };
  }
  const prometheus = prometheusConfig(spec);
  if (prometheus !== null) out.set('prometheus.yml', prometheus);
  const manifest = buildManifest(spec, inputSha256, secrets, manifestHosts, scrapeTargets(spec));
  out.set('manifest.json', `${JSON.stringify(manifest, null, 2)}\n`);
  return { files: out, manifest, hosts };
}

/** Renders one environment into rendered/<env>/ (replacing what was there). */
export function writeRendered(env: string, root = RENDERED_DIR): { dir: string; files: number } {
  const { spec, inputSha256 } = loadEnvSpec(env);
  const r = renderEnvironment(spec, inputSha256);
  const dir = join(root, env);
  rmSync(dir, { recursive: true, force: true });
  for (const [rel, content] of r.files) {
    mkdirSync(dirname(join(dir, rel)), { recursive: true });
    writeFileSync(join(dir, rel), content);
  }
  return { dir, files: r.files.size };
}
