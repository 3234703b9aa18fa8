/**
 * infra/observability: the alert rules are valid and behave as their unit tests say (Prometheus's
 * own `promtool`), the dashboard's queries are valid PromQL, and every metric the rules and the
 * dashboard name is exported by a running dsm process (scraped from a real cluster's admin
 * listeners after a file went up and down).
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { RunningGateway } from '@dsm/gateway/node';
import { patternBytes } from '@dsm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { startTestCluster, startUncachedGateway, type TestCluster } from './helpers.ts';

const DIR = resolve(import.meta.dirname, '../../infra/observability');
const RULES = join(DIR, 'prometheus/dsm-alerts.yml');
const RULE_TESTS = join(DIR, 'prometheus/dsm-alerts.test.yml');
const DASHBOARD = join(DIR, 'grafana/dsm-overview.json');
const PROMTOOL = process.env.DSM_PROMTOOL || 'promtool';

function promtool(args: string[], cwd = DIR): Promise<{ code: number; out: string }> {
  return new Promise((res, rej) => {
    execFile(PROMTOOL, args, { cwd, timeout: 60_000 }, (err, stdout, stderr) => {
      if (err && (err as NodeJS.ErrnoException).code === 'ENOENT')
        return rej(new Error(`no promtool (${PROMTOOL}) on PATH: install Debian's "prometheus" package`));
      res({ code: err ? Number(err.code ?? 1) : 0, out: `${stdout}${stderr}` });
    });
  });
}

interface RuleFile {
  groups: { name: string; rules: { alert?: string; expr: string }[] }[];
}
interface Dashboard {
  panels: { title: string; type: string; targets?: { expr: string }[] }[];
}

const rules = parseYaml(readFileSync(RULES, 'utf8')) as RuleFile;
const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as Dashboard;
const ruleExprs = rules.groups.flatMap((g) => g.rules.map((r) => r.expr));
const dashboardExprs = dashboard.panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr));

/** Metric names a PromQL expression uses (dsm's own, `dsm_…`). */
function metricNames(expr: string): string[] {
  return [...expr.replace(/"[^"]*"/g, '""').matchAll(/\b(dsm_[a-z0-9_]+)\b/g)].map((m) => m[1] as string);
}

describe('infra/observability', () => {
  let scratch: string;
  beforeAll(() => {
    scratch = mkdtempSync(join(tmpdir(), 'dsm-obs-'));
  });
  afterAll(() => rmSync(scratch, { recursive: true, force: true }));

  it('the alert rules pass promtool check rules', async () => {
    const r = await promtool(['check', 'rules', RULES]);
    expect(r.out).toContain('SUCCESS');
    expect(r.code).toBe(0);
    expect(rules.groups.flatMap((g) => g.rules).length).toBeGreaterThanOrEqual(14);
  });

  it('every alert fires in its scenario and stays silent on a healthy cluster (promtool test rules)', async () => {
    const r = await promtool(['test', 'rules', RULE_TESTS]);
    expect(r.out).toContain('SUCCESS');
    expect(r.code).toBe(0);
    // every alert has a firing case in the unit tests
    const tests = parseYaml(readFileSync(RULE_TESTS, 'utf8')) as {
      tests: { alert_rule_test: { alertname: string; exp_alerts: unknown[] }[] }[];
    };
    const fired = new Set(
      tests.tests.flatMap((t) =>
        t.alert_rule_test.filter((a) => a.exp_alerts.length > 0).map((a) => a.alertname),
      ),
    );
    for (const g of rules.groups)
      for (const rule of g.rules) if (rule.alert) expect(fired).toContain(rule.alert);
  });

  it('a broken rule is caught (promtool is not lenient)', async () => {
    const bad = join(scratch, 'bad.yml');
    writeFileSync(bad, 'groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(rate(x[5m])\n');
    const r = await promtool(['check', 'rules', bad]);
    expect(r.code).not.toBe(0);
  });

  it('every dashboard query is valid PromQL', async () => {
    expect(dashboardExprs.length).toBeGreaterThanOrEqual(15);
    // the queries as recording rules, with Grafana's $__rate_interval as a fixed range
    const file = join(scratch, 'dashboard-rules.yml');
    const body = dashboardExprs
      .map(
        (e, i) =>
          `      - record: dsm_dashboard_query_${i}\n        expr: ${JSON.stringify(e.replaceAll('$__rate_interval', '5m'))}\n`,
      )
      .join('');
    writeFileSync(file, `groups:\n  - name: dashboard\n    rules:\n${body}`);
    const r = await promtool(['check', 'rules', file]);
    expect(r.out).toContain(`SUCCESS: ${dashboardExprs.length} rules found`);
  });

  describe('against a running cluster', () => {
    let t: TestCluster;
    let gw: RunningGateway;
    beforeAll(async () => {
      t = await startTestCluster('sqlite+memory', {
        trackers: 1,
        groups: ['group001'],
        storagesPerGroup: 1,
        extra: {
          tracker: { admin: { listen: '127.0.0.1:0', vips: ['127.0.0.1'] } },
          storage: { admin: { listen: '127.0.0.1:0' } },
          id: { admin: { listen: '127.0.0.1:0' } },
        },
      });
      await t.waitActive();
      gw = await startUncachedGateway(t, { admin: { listen: '127.0.0.1:0' } });
    }, 60_000);
    afterAll(async () => {
      await gw?.close();
      await t?.stop();
    });

    it('storage and id server metrics move with an upload; their /readyz checks store and trackers', async () => {
      const node = (role: string) => {
        const n = [...t.cluster.nodes.values()].find((x) => x.role === role);
        return n?.ready.admin as string;
      };
      const scrape = async (role: string) => (await fetch(`${node(role)}/metrics`)).text();
      const value = (text: string, name: string) => {
        const m = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(text);
        return m ? Number(m[1]) : Number.NaN;
      };
      const before = await scrape('storage');
      const up = await fetch(`${gw.url}/files`, {
        method: 'POST',
        headers: { 'content-type': 'application/octet-stream' },
        body: patternBytes(4096, 2),
      });
      expect(up.status).toBe(201);
      const after = await scrape('storage');
      expect(value(after, 'dsm_storage_commits_total')).toBe(value(before, 'dsm_storage_commits_total') + 1);
      expect(value(after, 'dsm_storage_free_bytes')).toBeGreaterThan(0);
      expect(value(after, 'dsm_storage_total_bytes')).toBeGreaterThanOrEqual(
        value(after, 'dsm_storage_free_bytes'),
      );
      expect(value(after, 'dsm_storage_writable')).toBe(1);
      expect(value(after, 'dsm_storage_tracker_links_joined')).toBe(1);
      expect(after).toMatch(
        /^dsm_node_requests_total\{command="STORAGE_UPLOAD_EXT",status="ok",role="storage"\} \d+$/m,
      );
      const id = await scrape('id');
      expect(value(id, 'dsm_id_reservations_total')).toBeGreaterThanOrEqual(1);
      expect(value(id, 'dsm_id_reservation_failures_total')).toBe(0);
      const ready = await (await fetch(`${node('storage')}/readyz`)).json();
      expect(ready).toEqual({
        status: 'ready',
        checks: [
          { name: 'database', ok: true },
          { name: 'cache', ok: true },
          { name: 'store', ok: true },
          { name: 'trackers', ok: true },
        ],
      });
    });

    it('exports every metric the rules and the dashboard name', async () => {
      // a file up and down, so that every labelled series exists
      const up = await fetch(`${gw.url}/files`, {
        method: 'POST',
        headers: { 'content-type': 'application/octet-stream' },
        body: patternBytes(64 * 1024, 1),
      });
      expect(up.status).toBe(201);
      const { id } = (await up.json()) as { id: string };
      expect((await fetch(`${gw.url}/files/${id}`)).status).toBe(200);

      const admins = [...t.cluster.nodes.values()]
        .map((n) => n.ready.admin)
        .filter((u): u is string => typeof u === 'string');
      admins.push(gw.adminUrl as string);
      expect(admins.length).toBe(4);
      const exported = new Set<string>();
      for (const url of admins) {
        const text = await (await fetch(`${url}/metrics`)).text();
        for (const m of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
          const [name, type] = [m[1] as string, m[2] as string];
          exported.add(name);
          if (type === 'histogram') for (const s of ['_bucket', '_count', '_sum']) exported.add(name + s);
        }
      }
      const missing = new Set<string>();
      for (const e of [...ruleExprs, ...dashboardExprs])
        for (const name of metricNames(e)) if (!exported.has(name)) missing.add(name);
      expect([...missing], 'metrics named by infra/observability that no process exports').toEqual([]);
      // the check itself sees names: a made-up one is reported
      expect(metricNames('rate(dsm_made_up_total[5m])').filter((n) => !exported.has(n))).toEqual([
        'dsm_made_up_total',
      ]);
    });
  });
});
