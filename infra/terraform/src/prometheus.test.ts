/**
 * Monitoring in the rendered environments: every node and gateway config has its admin listener
 * on the host's private address (tracker and id pairs naming their VIP), and `prometheus.yml`
 * scrapes exactly those listeners in the jobs infra/observability's rules match, with
 * `promtool check config` (Debian's prometheus package; .ci/run installs it) accepting it.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { hostsOf, listEnvironments, loadEnvSpec, REPO_ROOT, vipAddress } from './inputs.ts';
import { nodeConfigFor } from './node-configs.ts';
import { ALERT_RULES_SOURCE } from './prometheus.ts';
import { renderEnvironment } from './render-environment.ts';
import { type EnvSpec, parseEnvSpec } from './spec.ts';

const run = promisify(execFile);
let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'dsm-tf-prom-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface PromConfig {
  rule_files: string[];
  scrape_configs: { job_name: string; metrics_path: string; static_configs: { targets: string[] }[] }[];
}

const PORTS = (spec: EnvSpec, role: string, group?: string): number =>
  role === 'tracker'
    ? spec.trackers.port
    : role === 'id'
      ? spec.idServers.port
      : role === 'storage'
        ? spec.storageGroups[group as string]!.port
        : spec.gateways!.port;

/** The `job=~"…"` selector of the "node down" rule: the job names the rules expect. */
function rulesJobPattern(): RegExp {
  const rules = readFileSync(join(REPO_ROOT, ALERT_RULES_SOURCE), 'utf8');
  const m = /up\{job=~"([^"]+)"\}/.exec(rules);
  if (!m) throw new Error(`${ALERT_RULES_SOURCE}: no up{job=~"…"} rule`);
  return new RegExp(`^(?:${m[1]})$`);
}

const monitored = listEnvironments().filter((e) => loadEnvSpec(e).spec.monitoring);

it('the networked environments render monitoring (dev and prod at least)', () => {
  expect(monitored).toEqual(expect.arrayContaining(['dev', 'prod']));
});

describe.each(monitored)('environment %s: admin listeners and prometheus.yml', (env) => {
  const { spec, inputSha256 } = loadEnvSpec(env);
  const r = renderEnvironment(spec, inputSha256);
  const offset = spec.monitoring!.adminPortOffset;
  const text = r.files.get('prometheus.yml');

  it('every node and gateway config listens for admin on its private address, port + offset', () => {
    const dsmHosts = hostsOf(spec).filter((h) => h.role !== 'data');
    expect(dsmHosts.length).toBeGreaterThan(0);
    for (const h of dsmHosts) {
      const { role, config } = nodeConfigFor(spec, h.name);
      const admin = config.admin as { listen: string; vips?: string[] };
      expect(admin.listen, h.name).toBe(`${h.address}:${PORTS(spec, h.role, h.group) + offset}`);
      // what the host receives is that config
      expect(JSON.parse(r.files.get(`${h.name}/${role}.json`) as string).admin).toEqual(admin);
      if (h.role === 'tracker') expect(admin.vips).toEqual([vipAddress(spec.trackers.vip)]);
      else if (h.role === 'id') expect(admin.vips).toEqual([vipAddress(spec.idServers.vip)]);
      else expect((admin as Record<string, unknown>).vips).toBeUndefined();
    }
  });

  it('the gateways’ status page knows the id servers and the pairs’ admin listeners', () => {
    for (const h of hostsOf(spec).filter((x) => x.role === 'gateway')) {
      const admin = nodeConfigFor(spec, h.name).config.admin as { idServers: string[]; nodeAdmins: string[] };
      expect(admin.idServers).toEqual(
        Object.values(spec.idServers.hosts).map((a) => `${a}:${spec.idServers.port}`),
      );
      expect(admin.nodeAdmins).toEqual([
        ...Object.values(spec.trackers.hosts).map((a) => `http://${a}:${spec.trackers.port + offset}`),
        ...Object.values(spec.idServers.hosts).map((a) => `http://${a}:${spec.idServers.port + offset}`),
      ]);
    }
  });

  it('prometheus.yml parses, names the alert rules and scrapes every host in its role job', () => {
    expect(text, 'rendered prometheus.yml').toBeDefined();
    const doc = parseYaml(text as string) as PromConfig;
    expect(doc.rule_files).toEqual([spec.monitoring!.rulesFile]);
    const jobs = new Map(doc.scrape_configs.map((j) => [j.job_name, j]));
    const want = ['tracker', 'id', 'storage', ...(spec.gateways ? ['gateway'] : [])].map((r) => `dsm-${r}`);
    expect([...jobs.keys()]).toEqual(want);
    const pattern = rulesJobPattern();
    for (const name of jobs.keys()) expect(name).toMatch(pattern);
    for (const h of hostsOf(spec).filter((x) => x.role !== 'data')) {
      const job = jobs.get(`dsm-${h.role}`)!;
      expect(job.metrics_path).toBe('/metrics');
      const targets = job.static_configs.flatMap((s) => s.targets);
      expect(targets, h.name).toContain(`${h.address}:${PORTS(spec, h.role, h.group) + offset}`);
    }
    const total = doc.scrape_configs.reduce(
      (n, j) => n + j.static_configs.flatMap((s) => s.targets).length,
      0,
    );
    expect(total).toBe(hostsOf(spec).filter((x) => x.role !== 'data').length);
    expect(r.manifest.monitoring?.prometheusConfig).toBe('prometheus.yml');
    expect(r.manifest.monitoring?.jobs['dsm-tracker']).toEqual(
      jobs.get('dsm-tracker')!.static_configs[0]!.targets,
    );
  });

  it('promtool check config accepts it, with the repository’s alert rules in place of the installed path', async () => {
    const promtool = await run('promtool', ['--version']).catch(() => null);
    if (!promtool)
      throw new Error('promtool is not on PATH: apt-get install prometheus (.ci/run installs it)');
    const file = join(dir, `${env}-prometheus.yml`);
    const rules = join(REPO_ROOT, ALERT_RULES_SOURCE);
    writeFileSync(file, (text as string).replace(spec.monitoring!.rulesFile, rules));
    const ok = await run('promtool', ['check', 'config', file]).catch(
      (e: { stdout: string; stderr: string }) => {
        throw new Error(`promtool check config ${file}: ${e.stdout}${e.stderr}`);
      },
    );
    expect(`${ok.stdout}${ok.stderr}`).toMatch(/SUCCESS/);
    // and it is not lenient: two jobs of one name are refused
    const bad = join(dir, `${env}-bad.yml`);
    writeFileSync(bad, readFileSync(file, 'utf8').replace('job_name: dsm-id', 'job_name: dsm-tracker'));
    await expect(run('promtool', ['check', 'config', bad])).rejects.toThrow(
      /multiple scrape configs|dsm-tracker/,
    );
  });
});

describe('monitoring settings', () => {
  const raw = () =>
    JSON.parse(readFileSync(join(REPO_ROOT, 'infra/terraform/environments/prod/dsm.json'), 'utf8'));

  it('monitoring null: no admin listeners, no prometheus.yml', () => {
    const spec = parseEnvSpec({ ...raw(), monitoring: null });
    const r = renderEnvironment(spec, 'x');
    expect(r.files.has('prometheus.yml')).toBe(false);
    expect(r.manifest.monitoring).toBeNull();
    for (const h of hostsOf(spec).filter((x) => x.role !== 'data'))
      expect(nodeConfigFor(spec, h.name).config.admin).toBeUndefined();
  });

  it('an offset past port 65535 and an admin.listen set by hand are refused', () => {
    const far = parseEnvSpec({ ...raw(), monitoring: { adminPortOffset: 60000 } });
    expect(() => renderEnvironment(far, 'x')).toThrow(/above 65535/);
    const r = raw();
    r.gateways.config.admin = { listen: '127.0.0.1:9464' };
    expect(() => renderEnvironment(parseEnvSpec(r), 'x')).toThrow(/admin\.listen" is derived/);
    // a gateway's other admin keys stay its own
    const t = raw();
    t.gateways.config.admin = { token: 'y'.repeat(40) };
    const g = nodeConfigFor(parseEnvSpec(t), 'g1').config.admin as Record<string, unknown>;
    expect(g.token).toBe('y'.repeat(40));
    expect(g.listen).toBe('10.0.1.31:18080');
  });
});
