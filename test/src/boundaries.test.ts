import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import {
  checkBoundaries,
  formatViolation,
  type ImportRef,
  importsOf,
  type RepoModel,
  readRepo,
  type Violation,
} from './boundaries.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/**
 * Known violations, each as `rule: file-or-packages: detail` (no line number). Empty: issue 11
 * ("test infrastructure without cycles") removed the three it held (the cli ↔ gateway cycle and
 * Terraform loading the HA lab from test code by path). The list may only shrink: an entry that
 * no longer occurs fails the test.
 */
const KNOWN: readonly string[] = [];

/** The violation as the allow-list names it: without the line, which moves with every edit. */
const keyOf = (v: Violation): string => formatViolation({ ...v, where: v.where.replace(/:\d+$/, '') });

const model = readRepo(ROOT);

/** The real repository plus one more import. */
function withImport(file: string, specifier: string, kind: ImportRef['kind'] = 'import'): RepoModel {
  return { ...model, imports: [...model.imports, { file, line: 1, specifier, kind }] };
}

/** What the real repository already violates, so a synthetic case sees only its own. */
const baseline = new Set(checkBoundaries(model).map(formatViolation));

function rulesFor(m: RepoModel, file: string): string[] {
  return checkBoundaries(m)
    .filter((v) => v.where.startsWith(`${file}:`) && !baseline.has(formatViolation(v)))
    .map((v) => v.rule)
    .sort();
}

describe('package boundaries (docs/architecture.md, "Rules checked by a test")', () => {
  it('reads the imports of every workspace package', () => {
    const files = new Set(model.imports.map((i) => i.file));
    for (const p of model.packages) {
      expect(
        [...files].some((f) => f.startsWith(`${p.dir}/`)),
        `no import read in ${p.dir}`,
      ).toBe(true);
    }
    expect(model.imports.length).toBeGreaterThan(500);
  });

  it('finds no violation beyond the known ones, and every known one still occurs', () => {
    const found = checkBoundaries(model);
    const keys = new Set(found.map(keyOf));
    const unexpected = found.filter((v) => !KNOWN.includes(keyOf(v))).map(formatViolation);
    expect(unexpected, 'fix these (or, for a dependency, declare it)').toEqual([]);
    const stale = KNOWN.filter((k) => !keys.has(k));
    expect(stale, 'fixed: remove these from KNOWN in boundaries.test.ts').toEqual([]);
  });

  it('fails on an undeclared dependency', () => {
    expect(
      rulesFor(withImport('shared/client/src/index.ts', 'left-pad'), 'shared/client/src/index.ts'),
    ).toEqual(['undeclared-dependency']);
    // vitest is a root devDependency: fine in a test file, undeclared in production code
    expect(rulesFor(withImport('shared/kv/src/kv.test.ts', 'vitest'), 'shared/kv/src/kv.test.ts')).toEqual(
      [],
    );
    expect(rulesFor(withImport('shared/kv/src/redis.ts', 'vitest'), 'shared/kv/src/redis.ts')).toEqual([
      'undeclared-dependency',
    ]);
  });

  it('fails on a package cycle, dev dependencies included', () => {
    const packages = model.packages.map((p) =>
      p.name === '@dsm/packets' ? { ...p, devDependencies: new Set(['@dsm/client']) } : p,
    );
    const cycles = checkBoundaries({ ...model, packages })
      .filter((v) => v.rule === 'package-cycle')
      .map((v) => v.detail);
    expect(cycles).toContain('@dsm/client → @dsm/packets →(dev) @dsm/client');
  });

  it('fails on a declared @dsm/* dependency that nothing imports', () => {
    // bench: nothing depends on it, so the extra arrow makes no cycle and only this rule speaks
    const packages = model.packages.map((p) =>
      p.name === '@dsm/bench' ? { ...p, devDependencies: new Set([...p.devDependencies, '@dsm/kv']) } : p,
    );
    const found = checkBoundaries({ ...model, packages }).filter((v) => !baseline.has(formatViolation(v)));
    expect(found.map(formatViolation)).toEqual([
      'unused-workspace-dependency: bench/package.json: @dsm/bench declares @dsm/kv but no file of it imports @dsm/kv',
    ]);
  });

  it('fails when packets imports one of ours or a node: module', () => {
    const f = 'shared/packets/src/codec.ts';
    expect(rulesFor(withImport(f, 'node:fs'), f)).toEqual(['packets-imports']);
    expect(rulesFor(withImport(f, '@dsm/common'), f)).toEqual(['packets-imports', 'undeclared-dependency']);
  });

  it('fails when a node imports another node', () => {
    const f = 'nodes/storage/src/storage.ts';
    expect(rulesFor(withImport(f, '@dsm/id-node'), f)).toEqual([
      'node-imports-node',
      'undeclared-dependency',
    ]);
    // tests too: a node's tests inject what they need from another node
    const t = 'nodes/storage/src/storage.test.ts';
    expect(rulesFor(withImport(t, '@dsm/id-node'), t)).toEqual([
      'node-imports-node',
      'undeclared-dependency',
    ]);
  });

  it('fails when the gateway imports the database layer or a node', () => {
    const f = 'gateway/src/app.ts';
    expect(rulesFor(withImport(f, '@dsm/db'), f)).toEqual([
      'gateway-imports-db-or-node',
      'undeclared-dependency',
    ]);
    expect(rulesFor(withImport(f, '@dsm/tracker-node'), f)).toEqual([
      'gateway-imports-db-or-node',
      'undeclared-dependency',
    ]);
  });

  it('fails when production code imports test code', () => {
    expect(rulesFor(withImport('shared/kv/src/redis.ts', '@dsm/testkit'), 'shared/kv/src/redis.ts')).toEqual([
      'dev-dependency-in-production',
      'production-imports-test-code',
    ]);
    const f = 'nodes/tracker/src/tracker.ts';
    expect(rulesFor(withImport(f, './test-support.ts'), f)).toEqual(['production-imports-test-code']);
    expect(rulesFor(withImport(f, './tracker.test.ts'), f)).toEqual(['production-imports-test-code']);
    expect(rulesFor(withImport(f, './test-support.ts', 'path'), f)).toEqual(['production-imports-test-code']);
    // the same in a test file is what test-support files are for
    const t = 'nodes/tracker/src/tracker.test.ts';
    expect(rulesFor(withImport(t, './test-support.ts'), t)).toEqual([]);
  });

  it('fails on a relative import into another package or to a missing file', () => {
    const f = 'shared/client/src/index.ts';
    expect(rulesFor(withImport(f, '../../common/src/index.ts'), f)).toEqual([
      'relative-import-leaves-package',
    ]);
    expect(rulesFor(withImport(f, './no-such-file.ts'), f)).toEqual(['missing-file']);
  });

  it('reads every form of import and nothing in comments', () => {
    const text = [
      "import a from 'a';",
      "import type { B } from 'b';",
      "export * from 'c';",
      "export { d } from 'd';",
      "const e = await import('e');",
      "const f = require('f');",
      "type G = typeof import('g');",
      "import 'h';",
      "// import x from 'in-a-comment';",
      "const p = new URL('./p.ts', import.meta.url);",
      "const q = new URL('../fixtures/q.json', import.meta.url);",
    ].join('\n');
    expect(importsOf('x.ts', text).map((i) => `${i.kind}:${i.specifier}:${i.line}`)).toEqual([
      'import:a:1',
      'import:b:2',
      'import:c:3',
      'import:d:4',
      'import:e:5',
      'import:f:6',
      'import:g:7',
      'import:h:8',
      'path:./p.ts:10',
    ]);
  });
});
