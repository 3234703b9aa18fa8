#!/usr/bin/env node
// `npm run build`: bundles the `dsm` command (every node, the gateway's Node entry, the CLI) into
// dist/dsm.mjs, so production hosts run plain `node dist/dsm.mjs ...` without the TypeScript
// loader (about 35 MiB less RSS per process and no compile at start; see docs/performance.md).
// The code is split: dist/dsm.mjs is a small entry, the command and each node package are chunks
// in dist/chunks/ loaded when used (the `await import()`s of cli/src/main.ts), so a node loads
// only the registry packages it uses (a storage does not load hono, @hono/node-server,
// prom-client or jose: about 10 MiB of RSS). zod and kysely are bundled too (what a node uses of
// them, one module instead of hundreds: about 8 MiB less RSS per node); the other registry
// packages (native, lazily required, or loading files of their own) stay external and load from
// node_modules, so the bundle must live inside the repository (or next to a node_modules with
// the same packages).
import { readFileSync, rmSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const outfile = process.argv[2] ?? join(root, 'dist', 'dsm.mjs');

/** Registry packages bundled into dist/ (plain ES modules, no native part, no files of their own). */
const BUNDLED = new Set(['zod', 'kysely']);
const outdir = dirname(outfile);
const name = basename(outfile).replace(/\.m?js$/, '');
// chunk names carry a content hash: drop the previous build's chunks
rmSync(join(outdir, 'chunks'), { recursive: true, force: true });

await build({
  entryPoints: { [name]: join(root, 'cli', 'src', 'bundle.ts') },
  outdir,
  entryNames: '[name]',
  chunkNames: 'chunks/[name]-[hash]',
  outExtension: { '.js': '.mjs' },
  splitting: true,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  sourcemap: 'linked',
  // Workspace packages (@dsm/*) are bundled, and of the registry packages zod and kysely.
  external: Object.keys(pkg.dependencies ?? {}).filter((d) => !BUNDLED.has(d)),
  // every output file (entry and chunks) gets a `require` for the CommonJS packages
  // `dsm --version` of the bundle (cli/src/version.ts): the bundle has no package.json beside it
  define: { __DSM_VERSION__: JSON.stringify(pkg.version) },
  banner: {
    js: [
      "import { createRequire as __dsmCreateRequire } from 'node:module';",
      'const require = __dsmCreateRequire(import.meta.url);',
    ].join('\n'),
  },
  logLevel: 'warning',
});
process.stdout.write(`built ${outfile}\n`);
