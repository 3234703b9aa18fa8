import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { anchorsOf, checkDocs, type DocTree, formatDocProblem, readDocTree, slugOf } from './doc-links.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** A small repository in memory. */
function tree(files: Record<string, string>): DocTree {
  return {
    root: '/work/repo',
    files: Object.keys(files),
    ignoredDirs: ['dist/'],
    read: (f) => files[f] ?? '',
  };
}

describe('the markdown of the repository', () => {
  it('links only to files and headings that exist, and cites only files of the repository', () => {
    const t = readDocTree(ROOT);
    expect(t.files.filter((f) => f.endsWith('.md')).length).toBeGreaterThan(10);
    expect(checkDocs(t).map(formatDocProblem)).toEqual([]);
  });

  it('fails on a link to a missing file or heading', () => {
    const problems = checkDocs(
      tree({
        'README.md': [
          '# Top',
          'See [the protocol](docs/protocol.md), [gone](docs/gone.md) and [frames](docs/protocol.md#2-frames).',
          '[ref]: ./docs/nothing.md',
          'Back to [top](#top), not to [nowhere](#nowhere). `[in code](no/such/dir)` is an example.',
        ].join('\n'),
        'docs/protocol.md': '# Protocol\n\n## 1. Frame header\n',
      }),
    ).map(formatDocProblem);
    expect(problems).toEqual([
      "link: README.md:2: 'docs/gone.md': docs/gone.md does not exist",
      "anchor: README.md:2: 'docs/protocol.md#2-frames': no heading '#2-frames' in docs/protocol.md",
      "link: README.md:3: './docs/nothing.md': docs/nothing.md does not exist",
      "anchor: README.md:4: '#nowhere': no heading '#nowhere' in README.md",
    ]);
  });

  it('fails on a cited file that is not in the repository', () => {
    const problems = checkDocs(
      tree({
        'docs/a.md': [
          'As the design says (shared/DESIGN.md), the code is in `src/meta.ts` and `src/lost.ts`;',
          'the build writes `dist/dsm.mjs`; the capture is /work/shared/reference/seed-vectors.json.',
          'wrangler writes `gateway/dist/worker.js` (dist/ at any depth is output), not `gateway/dister/x.js`.',
          'Options like `performance.md-cache-timeout` are not files.',
        ].join('\n'),
        'nodes/storage/src/meta.ts': '',
      }),
    ).map(formatDocProblem);
    expect(problems).toEqual([
      "cited-file: docs/a.md:1: 'shared/DESIGN.md' is not a file of the repository",
      "cited-file: docs/a.md:1: 'src/lost.ts' is not a file of the repository",
      "outside-repo: docs/a.md:2: '/work/shared/reference/seed-vectors.json' is outside the repository",
      "cited-file: docs/a.md:3: 'gateway/dister/x.js' is not a file of the repository",
    ]);
  });

  it('makes anchors as GitHub does', () => {
    expect(slugOf('5.2 Ping (1) — extension')).toBe('52-ping-1--extension');
    expect(slugOf('The protocol server (`shared/server`)')).toBe('the-protocol-server-sharedserver');
    expect([...anchorsOf('# A\n```\n# not a heading\n```\n## A\n')]).toEqual(['a', 'a-1']);
  });
});
