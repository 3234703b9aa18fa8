/**
 * The renderer's command. Renders every host's provisioning of an environment with the same
 * code the HA tests use: keepalived.conf from `renderVipPair`, the GlusterFS steps and the mount
 * from `glusterGroupSteps` (both `@dsm/ha`), node configs checked against each node's own
 * `configSchema`. Terraform never templates these files itself: it reads the rendered folder
 * (`rendered/<env>/<host>/user-data.yaml.tftpl`, only secrets are filled in at apply time).
 *
 *   npm run render -w @dsm/terraform            # every environments/<env>/dsm.json
 *   npm run render -w @dsm/terraform -- prod    # one
 *
 * The parts, by concern: inputs.ts (dsm.json, its hosts, what a host runs), node-configs.ts,
 * ha.ts (keepalived and GlusterFS from @dsm/ha), templates.ts (scripts, units, data host
 * configs), render-roles.ts (one host, by role), manifest.ts, render-environment.ts (one
 * environment, written to rendered/<env>/).
 */
import { fileURLToPath } from 'node:url';
import { listEnvironments } from './inputs.ts';
import { writeRendered } from './render-environment.ts';

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const envs = process.argv.slice(2).length ? process.argv.slice(2) : listEnvironments();
  try {
    for (const env of envs) {
      const r = writeRendered(env);
      process.stdout.write(`rendered ${env}: ${r.files} files in ${r.dir}\n`);
    }
  } catch (e) {
    process.stderr.write(`render-provisioning: ${(e as Error).message}\n`);
    process.exit(1);
  }
}
