/**
 * `rendered/<env>/prometheus.yml`: the scrape jobs of the hosts an environment creates, for the
 * monitoring Prometheus (merge `scrape_configs` and `rule_files` into its prometheus.yml, or use
 * the file as it is). One job per role, `dsm-tracker`, `dsm-id`, `dsm-storage`, `dsm-gateway`
 * (the names infra/observability/prometheus/dsm-alerts.yml matches with `job=~"dsm-.*"`), whose
 * targets are the hosts' admin listeners (node-configs.ts `adminAddress`).
 */
import { stringify } from 'yaml';
import { hostsOf, RENDERER } from './inputs.ts';
import { adminAddress, SCRAPED_ROLES } from './node-configs.ts';
import type { EnvSpec } from './spec.ts';

/** Where the rules are in the repository (the rendered file names the installed path). */
export const ALERT_RULES_SOURCE = 'infra/observability/prometheus/dsm-alerts.yml';

export interface ScrapeTargets {
  /** job name → `host:adminPort` of each host, in dsm.json's order. */
  jobs: Record<string, string[]>;
  rulesFile: string;
}

/** The jobs and targets of an environment; null when it renders no admin listeners. */
export function scrapeTargets(spec: EnvSpec): ScrapeTargets | null {
  if (!spec.monitoring) return null;
  const jobs: Record<string, string[]> = {};
  for (const role of SCRAPED_ROLES) {
    const targets = hostsOf(spec)
      .filter((h) => h.role === role)
      .map((h) => adminAddress(spec, h) as string);
    if (targets.length) jobs[`dsm-${role}`] = targets;
  }
  return { jobs, rulesFile: spec.monitoring.rulesFile };
}

export function prometheusConfig(spec: EnvSpec): string | null {
  const t = scrapeTargets(spec);
  if (!t || !spec.monitoring) return null;
  const interval = `${spec.monitoring.scrapeIntervalS}s`;
  const doc = {
    rule_files: [t.rulesFile],
    scrape_configs: Object.entries(t.jobs).map(([job, targets]) => ({
      job_name: job,
      scrape_interval: interval,
      metrics_path: '/metrics',
      static_configs: [{ targets, labels: { dsm_environment: spec.environment } }],
    })),
  };
  return [
    `# Rendered by ${RENDERER} from environments/${spec.environment}/dsm.json: do not edit.`,
    `# Prometheus scrape jobs of the dsm hosts of "${spec.environment}" (their admin listeners:`,
    `# private address, dsm port + ${spec.monitoring.adminPortOffset}). rule_files is where the monitoring host`,
    `# installs ${ALERT_RULES_SOURCE}.`,
    stringify(doc, { lineWidth: 0 }).trimEnd(),
    '',
  ].join('\n');
}
