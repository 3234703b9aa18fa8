/**
 * The chaos run by hand, longer than in `npm test`:
 *
 *   npm run chaos -- --seconds 300 [--workers 200] [--backend mariadb+redis|sqlite+memory] [--seed N]
 *                    [--history FILE.jsonl] [--keep-logs DIR]
 *
 * Environment: DSM_CHAOS_SECONDS / DSM_CHAOS_WORKERS / DSM_CHAOS_BACKEND as defaults. Prints the
 * report; exits 1 when the history shows a violation (acknowledged data lost, wrong bytes, a
 * deleted file back).
 */
import { parseArgs } from 'node:util';
import { BACKEND_NAMES, type BackendName } from '../helpers.ts';
import { runChaos } from './run.ts';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: process.env.DSM_CHAOS_SECONDS ?? '300' },
    workers: { type: 'string', default: process.env.DSM_CHAOS_WORKERS ?? '200' },
    backend: { type: 'string', default: process.env.DSM_CHAOS_BACKEND ?? 'mariadb+redis' },
    seed: { type: 'string' },
    history: { type: 'string' },
    'keep-logs': { type: 'string' },
  },
});
const backend = values.backend as BackendName;
if (!BACKEND_NAMES.includes(backend)) {
  process.stderr.write(`--backend must be ${BACKEND_NAMES.join(' or ')}, not ${backend}\n`);
  process.exit(2);
}
const stamp = () => new Date().toISOString().slice(11, 19);
const r = await runChaos({
  seconds: Number(values.seconds),
  workers: Number(values.workers),
  backend,
  seed: values.seed === undefined ? undefined : Number(values.seed),
  historyFile: values.history,
  keepLogsDir: values['keep-logs'],
  log: (l) => process.stdout.write(`${stamp()} ${l}\n`),
});
process.stdout.write(`${r.report}\n`);
process.exit(r.violations.length > 0 ? 1 : 0);
