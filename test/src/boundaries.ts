/**
 * The package boundaries of docs/architecture.md ("Rules checked by a test"), read from the
 * source: every import of every workspace package is collected from the files on disk (so a
 * file not yet committed counts too) and checked against the packages' package.json files.
 *
 * `readRepo` builds the model, `checkBoundaries` judges it; they are apart so a test can add a
 * forbidden import to a real model and see the check fail.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { builtinModules } from 'node:module';
import { dirname, join, posix, relative, sep } from 'node:path';
import ts from 'typescript';

/** Packages whose every file is test code: never deployed, never imported by production code. */
export const TEST_PACKAGES: ReadonlySet<string> = new Set(['@dsm/testkit', '@dsm/test', '@dsm/bench']);
/** The packages under nodes/: a node never imports another node. */
export const NODE_PACKAGES: ReadonlySet<string> = new Set([
  '@dsm/id-node',
  '@dsm/tracker-node',
  '@dsm/storage-node',
]);
const PACKETS = '@dsm/packets';
const GATEWAY = '@dsm/gateway';
const DB = '@dsm/db';

const CODE_FILE = /\.(?:[cm]?ts|[cm]?js)$/;
/** Folders that hold no source of ours (installed, built or generated). */
const SKIP_DIRS = new Set(['node_modules', 'dist', 'coverage', 'rendered']);
/** `new URL('<literal>', import.meta.url)`: a module loaded by path at run time. */
const PATH_LOAD = /new URL\(\s*(['"`])([^'"`$]+)\1\s*,\s*import\.meta\.url\s*\)/g;
const BUILTINS: ReadonlySet<string> = new Set(builtinModules);

export interface PackageInfo {
  name: string;
  /** Repository-relative folder, `/`-separated. */
  dir: string;
  dependencies: ReadonlySet<string>;
  devDependencies: ReadonlySet<string>;
  peerDependencies: ReadonlySet<string>;
}

export interface ImportRef {
  /** Repository-relative file, `/`-separated. */
  file: string;
  line: number;
  specifier: string;
  /** 'path': a `new URL('./x.ts', import.meta.url)` literal that names a module file. */
  kind: 'import' | 'path';
}

export interface RepoModel {
  root: string;
  /** The root package.json's devDependencies: the shared test tools (vitest, fast-check, …). */
  rootDevDependencies: ReadonlySet<string>;
  packages: PackageInfo[];
  imports: ImportRef[];
}

export type Rule =
  | 'undeclared-dependency'
  | 'dev-dependency-in-production'
  | 'package-cycle'
  | 'unused-workspace-dependency'
  | 'packets-imports'
  | 'node-imports-node'
  | 'gateway-imports-db-or-node'
  | 'production-imports-test-code'
  | 'relative-import-leaves-package'
  | 'missing-file';

export interface Violation {
  rule: Rule;
  /** `file:line` or, for a cycle, the packages. */
  where: string;
  detail: string;
}

/** One line per violation; the allow-list of known violations matches on this text. */
export function formatViolation(v: Violation): string {
  return `${v.rule}: ${v.where}: ${v.detail}`;
}

const toPosix = (p: string): string => p.split(sep).join('/');

function readJson(file: string): Record<string, unknown> {
  return JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
}

function keysOf(pkg: Record<string, unknown>, field: string): Set<string> {
  const v = pkg[field];
  return new Set(v && typeof v === 'object' ? Object.keys(v) : []);
}

function codeFiles(root: string, dir: string, out: string[]): void {
  for (const e of readdirSync(join(root, dir), { withFileTypes: true })) {
    if (e.name.startsWith('.') || SKIP_DIRS.has(e.name)) continue;
    const rel = posix.join(dir, e.name);
    if (e.isDirectory()) codeFiles(root, rel, out);
    else if (e.isFile() && CODE_FILE.test(e.name)) out.push(rel);
  }
}

/** The imports of one source text (static, re-exports, `import()`, `require()`, path loads). */
export function importsOf(file: string, text: string): ImportRef[] {
  const lineAt = (pos: number): number => {
    let n = 1;
    for (let i = text.indexOf('\n'); i !== -1 && i < pos; i = text.indexOf('\n', i + 1)) n++;
    return n;
  };
  const out: ImportRef[] = ts
    .preProcessFile(text, true, true)
    .importedFiles.map((f) => ({ file, line: lineAt(f.pos), specifier: f.fileName, kind: 'import' }));
  for (const m of text.matchAll(PATH_LOAD)) {
    const spec = m[2]!;
    if (CODE_FILE.test(spec)) out.push({ file, line: lineAt(m.index), specifier: spec, kind: 'path' });
  }
  return out;
}

/** Reads the workspace packages of the root package.json and the imports of their files. */
export function readRepo(root: string): RepoModel {
  const rootPkg = readJson(join(root, 'package.json'));
  const packages: PackageInfo[] = [];
  const imports: ImportRef[] = [];
  for (const dir of rootPkg.workspaces as string[]) {
    const pkg = readJson(join(root, dir, 'package.json'));
    packages.push({
      name: pkg.name as string,
      dir,
      dependencies: keysOf(pkg, 'dependencies'),
      devDependencies: keysOf(pkg, 'devDependencies'),
      peerDependencies: keysOf(pkg, 'peerDependencies'),
    });
    const files: string[] = [];
    codeFiles(root, dir, files);
    for (const f of files) imports.push(...importsOf(f, readFileSync(join(root, f), 'utf8')));
  }
  return { root, rootDevDependencies: keysOf(rootPkg, 'devDependencies'), packages, imports };
}

/** The package a bare specifier names: `@scope/name` or `name` (subpaths dropped). */
export function packageOf(specifier: string): string {
  const parts = specifier.split('/');
  return specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0]!;
}

function isBuiltin(specifier: string): boolean {
  return specifier.startsWith('node:') || BUILTINS.has(packageOf(specifier));
}

/** Test code: `*.test.*`, `test-*` files (test-support.ts, test-child.ts) and the test packages. */
export function isTestFile(file: string, pkg: PackageInfo): boolean {
  const base = posix.basename(file);
  return TEST_PACKAGES.has(pkg.name) || /\.test\.[cm]?[jt]s$/.test(base) || base.startsWith('test-');
}

function packageOfFile(packages: PackageInfo[], file: string): PackageInfo | undefined {
  let best: PackageInfo | undefined;
  for (const p of packages) {
    if (file.startsWith(`${p.dir}/`) && (!best || p.dir.length > best.dir.length)) best = p;
  }
  return best;
}

/** Every cycle of the @dsm/* package graph (all three dependency kinds), one per strong component. */
function packageCycles(packages: PackageInfo[]): Violation[] {
  const names = new Set(packages.map((p) => p.name));
  const kindOf = (from: PackageInfo, to: string): string =>
    from.dependencies.has(to) ? '' : from.peerDependencies.has(to) ? '(peer)' : '(dev)';
  const edges = new Map<string, string[]>();
  for (const p of packages) {
    const to = [...p.dependencies, ...p.devDependencies, ...p.peerDependencies].filter((n) => names.has(n));
    edges.set(p.name, [...new Set(to)].sort());
  }
  const byName = new Map(packages.map((p) => [p.name, p]));
  const out: Violation[] = [];
  const seen = new Set<string>();
  for (const start of [...names].sort()) {
    if (seen.has(start)) continue;
    // shortest way back to `start` (breadth first), if there is one
    const prev = new Map<string, string>();
    const queue = [start];
    let found = false;
    for (let i = 0; i < queue.length && !found; i++) {
      const at = queue[i]!;
      for (const next of edges.get(at) ?? []) {
        if (next === start) {
          prev.set(start, at);
          found = true;
          break;
        }
        if (!prev.has(next)) {
          prev.set(next, at);
          queue.push(next);
        }
      }
    }
    if (!found) continue;
    const between: string[] = [];
    for (let at = prev.get(start)!; at !== start; at = prev.get(at)!) between.unshift(at);
    const path = [start, ...between, start];
    for (const n of path) seen.add(n);
    let shown = start;
    for (let i = 1; i < path.length; i++)
      shown += ` →${kindOf(byName.get(path[i - 1]!)!, path[i]!)} ${path[i]}`;
    out.push({ rule: 'package-cycle', where: path.slice(0, -1).join(', '), detail: shown });
  }
  return out;
}

/** The boundary violations of a model; empty when every rule holds. */
export function checkBoundaries(model: RepoModel): Violation[] {
  const out: Violation[] = [];
  const byName = new Map(model.packages.map((p) => [p.name, p]));
  for (const imp of model.imports) {
    const pkg = packageOfFile(model.packages, imp.file);
    if (!pkg) continue;
    const test = isTestFile(imp.file, pkg);
    const where = `${imp.file}:${imp.line}`;
    const add = (rule: Rule, detail: string): void => {
      out.push({ rule, where, detail });
    };
    const spec = imp.specifier;

    if (spec.startsWith('.') || spec.startsWith('/')) {
      // path loads are checked in production code only: tests also start programs by path
      if (imp.kind === 'path' && test) continue;
      const target = toPosix(relative(model.root, join(model.root, dirname(imp.file), spec)));
      if (!existsSync(join(model.root, target))) add('missing-file', `'${spec}' (${target}) does not exist`);
      const owner = packageOfFile(model.packages, target);
      if (owner !== pkg) {
        add(
          'relative-import-leaves-package',
          `'${spec}' reaches into ${owner ? owner.name : target}; import by package name`,
        );
      }
      if (!test && owner && isTestFile(target, owner)) {
        add('production-imports-test-code', `'${spec}' is test code`);
      }
      continue;
    }
    if (pkg.name === PACKETS && !test) {
      add('packets-imports', `'${spec}': @dsm/packets imports nothing but its own files (no I/O)`);
    }
    if (isBuiltin(spec)) continue;
    if (spec.startsWith('cloudflare:')) continue;
    if (/^[a-z][a-z0-9+.-]*:/.test(spec)) {
      add('undeclared-dependency', `'${spec}': unknown module scheme`);
      continue;
    }
    const name = packageOf(spec);
    if (name === pkg.name) continue; // a package may import itself through its exports
    const runtime = pkg.dependencies.has(name) || pkg.peerDependencies.has(name);
    if (test) {
      if (!runtime && !pkg.devDependencies.has(name) && !model.rootDevDependencies.has(name)) {
        add('undeclared-dependency', `'${spec}': ${name} is not in ${pkg.dir}/package.json`);
      }
    } else if (!runtime) {
      add(
        pkg.devDependencies.has(name) ? 'dev-dependency-in-production' : 'undeclared-dependency',
        pkg.devDependencies.has(name)
          ? `'${spec}': ${name} is only a devDependency of ${pkg.name}`
          : `'${spec}': ${name} is not in the dependencies of ${pkg.dir}/package.json`,
      );
    }
    const target = byName.get(name);
    if (!target) continue;
    if (NODE_PACKAGES.has(pkg.name) && NODE_PACKAGES.has(name)) {
      add('node-imports-node', `${pkg.name} imports ${name}`);
    }
    if (pkg.name === GATEWAY && (name === DB || NODE_PACKAGES.has(name))) {
      add('gateway-imports-db-or-node', `the gateway imports ${name}`);
    }
    if (!test && TEST_PACKAGES.has(name)) {
      add('production-imports-test-code', `'${spec}' is test code`);
    }
  }
  out.push(...packageCycles(model.packages));
  // a declared @dsm/* dependency nothing imports still shapes the graph above (and can make a cycle)
  for (const p of model.packages) {
    const used = new Set(
      model.imports
        .filter((i) => packageOfFile(model.packages, i.file) === p && !i.specifier.startsWith('.'))
        .map((i) => packageOf(i.specifier)),
    );
    for (const d of [...p.dependencies, ...p.devDependencies, ...p.peerDependencies]) {
      if (byName.has(d) && !used.has(d)) {
        out.push({
          rule: 'unused-workspace-dependency',
          where: `${p.dir}/package.json`,
          detail: `${p.name} declares ${d} but no file of it imports ${d}`,
        });
      }
    }
  }
  return out;
}
