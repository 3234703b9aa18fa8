import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { waitForIdle } from './proc.ts';
import { type BenchResult, runBench, Scope, SECTIONS, type Section } from './run.ts';
import { GiB, KiB, MiB } from './source.ts';
import { metOf, renderReferences, renderTable } from './table.ts';

const USAGE = `usage: npm run bench -- [options]

  --quick            64 MiB instead of 1 GiB (16 MiB instead of 64 MiB), 2 s loops, 1 repetition
  --only LIST        sections to run, comma-separated: ${SECTIONS.join(',')} (default: all)
  --reps N           repetitions of each big transfer (median reported; default 3, quick 1)
  --loop-ms MS       duration of each small-request loop (default 5000, quick 2000)
  --concurrency N    concurrency of the small-request loops (default 16)
  --dir DIR          parent folder of the scratch folder (default: the OS temp folder); the
                     cluster data and the nginx files share it, so they are on one disk
  --keep             keep the scratch folder (cluster logs, nginx error log)
  --json FILE        also write the results as JSON
  --docs             also write the figures as a dated section into docs/performance.md (above
                     the older sections, which stay)
  --profile DIR      cluster nodes write V8 CPU profiles into DIR (<role>-<pid>.cpuprofile)
  --wait-idle SEC    first wait up to SEC seconds for the machine to be ≥ 90% idle
  --from-source      run the cluster from the TypeScript sources through tsx (as \`npm start\`)
                     instead of the bundle of \`npm run build\` (what production hosts run)
`;

function fail(msg: string): never {
  process.stderr.write(`${msg}\n\n${USAGE}`);
  process.exit(2);
}

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    only: { type: 'string' },
    reps: { type: 'string' },
    'loop-ms': { type: 'string' },
    concurrency: { type: 'string' },
    dir: { type: 'string' },
    keep: { type: 'boolean', default: false },
    json: { type: 'string' },
    docs: { type: 'boolean', default: false },
    profile: { type: 'string' },
    'wait-idle': { type: 'string' },
    'from-source': { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
  strict: true,
});
if (values.help) {
  process.stdout.write(USAGE);
  process.exit(0);
}

const int = (name: string, v: string | undefined, dflt: number, min: number, max: number): number => {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) fail(`--${name} must be an integer in ${min}..${max}`);
  return n;
};

const quick = values.quick;
const only = new Set<Section>();
for (const s of (values.only ?? SECTIONS.join(',')).split(',').map((x) => x.trim())) {
  if (!(SECTIONS as readonly string[]).includes(s)) fail(`unknown section "${s}"`);
  only.add(s as Section);
}
const log = (msg: string) => process.stderr.write(`[bench] ${msg}\n`);

const parent = resolve(values.dir ?? tmpdir());
mkdirSync(parent, { recursive: true });
const dir = mkdtempSync(join(parent, 'dsm-bench-'));
const profileDir = values.profile ? resolve(values.profile) : undefined;
if (profileDir) mkdirSync(profileDir, { recursive: true });

const scope = new Scope();
await scope.defer(() => {
  if (values.keep) log(`kept ${dir}`);
  else rmSync(dir, { recursive: true, force: true });
});

let interrupted = false;
const onSignal = (signal: NodeJS.Signals) => {
  if (interrupted) return;
  interrupted = true;
  log(`${signal}: cleaning up`);
  const force = setTimeout(() => process.exit(130), 20_000);
  force.unref();
  void scope.close().finally(() => process.exit(130));
};
process.on('SIGINT', onSignal);
process.on('SIGTERM', onSignal);

const waitIdle = int('wait-idle', values['wait-idle'], 0, 0, 24 * 3600);
let idleBefore: number | null = null;
if (waitIdle > 0) idleBefore = await waitForIdle(0.9, waitIdle * 1000, log);

// the tree the bundle is built from, read before the build (others may commit while the bench runs)
const tree = treeState();
let entry: string | undefined;
if (!values['from-source']) {
  const repo = resolve(fileURLToPath(new URL('../..', import.meta.url)));
  entry = join(repo, 'dist', 'dsm.mjs');
  log(`building ${entry} (npm run build)`);
  execFileSync(process.execPath, [join(repo, 'cli', 'build.mjs'), entry], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
}

let result: BenchResult | null = null;
let exitCode = 0;
try {
  result = await runBench(
    {
      quick,
      dir,
      largeSize: quick ? 64 * MiB : GiB,
      mediumSize: quick ? 16 * MiB : 64 * MiB,
      smallSize: 4 * KiB,
      reps: int('reps', values.reps, quick ? 1 : 3, 1, 20),
      loopReps: quick ? 1 : 2,
      loopMs: int('loop-ms', values['loop-ms'], quick ? 2000 : 5000, 100, 60_000),
      maxOps: 1_000_000,
      concurrency: int('concurrency', values.concurrency, 16, 1, 256),
      only,
      profileDir,
      entry,
      log,
    },
    scope,
  );
} catch (e) {
  if (!interrupted) {
    process.stderr.write(`benchmark failed: ${(e as Error).stack ?? e}\n`);
    exitCode = 1;
  }
} finally {
  if (!interrupted) await scope.close();
}

if (result && !interrupted) {
  const m = result.machine;
  const busy = Object.values(result.otherLoad).some((v) => v.cores > 0.2 || v.steal > 0.2);
  const loads = Object.entries(result.otherLoad);
  const conditions = [
    `tree: ${tree}`,
    `machine: ${m.cpus} × ${m.cpuModel}, ${m.memGiB} GiB RAM, Linux ${m.kernel}, Node ${m.node}, ${m.nginx}`,
    `load average (1, 5, 15 min) at start: ${m.loadAvgAtStart.join(' ')}; at end: ${m.loadAvgAtEnd.join(' ')}` +
      (idleBefore === null ? '' : `; CPU idle before start: ${Math.round(idleBefore * 100)}%`),
    `CPU of other processes while measuring (cores of ${m.cpus}; the machine's user+system time minus the bench's own processes): ` +
      loads.map(([k, v]) => `${k} ${v.cores.toFixed(2)}`).join(', ') +
      `; of it in processes alive at the end of the section: ${loads.map(([k, v]) => `${k} ${v.seen.toFixed(2)}`).join(', ')}` +
      `; steal: ${loads.map(([k, v]) => `${k} ${v.steal.toFixed(2)}`).join(', ')}` +
      (busy ? ' (the machine was not idle: figures are disturbed)' : ''),
  ];
  const targets = result.rows.filter((r) => r.target.kind !== 'none');
  const met = targets.filter((r) => metOf(r) === true).length;
  const missed = targets.filter((r) => metOf(r) === false).map((r) => r.name);
  const unknown = targets.filter((r) => metOf(r) === null).map((r) => r.name);
  const summary =
    `targets: ${met} of ${targets.length} met` +
    (missed.length ? `; missed: ${missed.join('; ')}` : '') +
    (unknown.length ? `; not measured: ${unknown.join('; ')}` : '');
  const title = `dsm benchmark ${m.date}${quick ? ' (--quick)' : ''}; cluster runs ${entry ? 'the bundle (npm run build)' : 'from source (tsx)'}`;
  const body = [
    renderTable(result.rows),
    '',
    'Every server and client measured (same run):',
    '',
    renderReferences(result.references),
    '',
    ...result.details.map((d) => `- ${d.name}: ${d.text}`),
  ];
  process.stdout.write(['', title, ...conditions, summary, '', ...body, ''].join('\n'));
  const failed = result.rows.filter((r) => r.note?.startsWith('FAILED'));
  if (failed.length) {
    log(`${failed.length} measurement(s) failed: ${failed.map((r) => r.name).join('; ')}`);
    exitCode = 1;
  }
  if (values.json) {
    writeFileSync(values.json, `${JSON.stringify({ quick, idleBefore, ...result }, null, 2)}\n`);
  }
  if (values.docs) {
    const repo = resolve(fileURLToPath(new URL('../..', import.meta.url)));
    const file = join(repo, 'docs', 'performance.md');
    const when = `${m.date.slice(0, 10)} ${m.date.slice(11, 16)} UTC`;
    const section = [
      `## Figures of ${when}: \`npm run bench${quick ? ' -- --quick' : ''}\` (written by the bench)`,
      '',
      ...conditions.map((c) => `- ${c}`),
      `- ${summary}`,
      '',
      ...body,
      '',
      '',
    ].join('\n');
    writeFileSync(
      file,
      insertSection(existsSync(file) ? readFileSync(file, 'utf8') : '# Performance\n', section),
    );
    log(`wrote the figures into ${file}`);
  }
}
if (!interrupted) process.exit(exitCode);

/** `section` above the first dated figures section of `doc` (older ones stay below it), or at the end. */
function insertSection(doc: string, section: string): string {
  const at = doc.search(/^## (Figures|Earlier figures)/m);
  if (at < 0) return `${doc.trimEnd()}\n\n${section}`;
  return `${doc.slice(0, at)}${section}${doc.slice(at)}`;
}

/** The commit the bench ran on and how many files differed from it (the bundle is built from the working tree). */
function treeState(): string {
  const repo = resolve(fileURLToPath(new URL('../..', import.meta.url)));
  try {
    const git = (...args: string[]) =>
      execFileSync('git', ['-C', repo, ...args], {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'ignore'],
      }).trim();
    const head = git('log', '-1', '--format=%h %cI');
    const dirty = git('status', '--porcelain', '--untracked-files=no').split('\n').filter(Boolean).length;
    return `commit ${head}${dirty ? `, plus ${dirty} changed file(s) not committed (measured as they were)` : ''}`;
  } catch {
    return 'not a git checkout';
  }
}
