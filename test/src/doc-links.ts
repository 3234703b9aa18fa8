/**
 * Words that point at files must point at files that exist: relative links in the repository's
 * markdown (with their `#anchor`s), and file names the text cites (`nodes/storage/src/meta.ts`,
 * `docs/protocol.md`, `seed-vectors.md`). Checked by doc-links.test.ts.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, posix } from 'node:path';

const TEMP = `${tmpdir().replace(/\/+$/, '')}/`;

export interface DocProblem {
  /** `file:line`, repository-relative. */
  where: string;
  kind: 'link' | 'anchor' | 'cited-file' | 'outside-repo';
  detail: string;
}

export const formatDocProblem = (p: DocProblem): string => `${p.kind}: ${p.where}: ${p.detail}`;

export interface DocTree {
  root: string;
  /** Repository-relative paths of the files in the repository (tracked or new, not ignored). */
  files: readonly string[];
  /** Folders .gitignore names (build output such as `dist/`): paths under them are outputs. */
  ignoredDirs: readonly string[];
  /** The text of a repository-relative file. */
  read(file: string): string;
}

/** The repository as git sees it: tracked files plus new ones that are not ignored. */
export function readDocTree(root: string): DocTree {
  let listing: string;
  try {
    listing = execFileSync('git', ['ls-files', '-co', '--exclude-standard'], { cwd: root, encoding: 'utf8' });
  } catch (e) {
    throw new Error(`the doc checks list the repository's files with git, which failed in ${root}`, {
      cause: e,
    });
  }
  const files = listing.split('\n').filter((f) => f && existsSync(join(root, f)));
  const gitignore = existsSync(join(root, '.gitignore'))
    ? readFileSync(join(root, '.gitignore'), 'utf8')
    : '';
  const ignoredDirs = gitignore
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.endsWith('/') && !l.startsWith('#'));
  return { root, files, ignoredDirs, read: (f) => readFileSync(join(root, f), 'utf8') };
}

/** GitHub's heading anchor: lower case, punctuation dropped, each space a hyphen. */
export function slugOf(heading: string): string {
  return heading
    .replace(/!?\[([^\]]*)\]\([^)]*\)/g, '$1')
    .replace(/<[^>]+>/g, '')
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\p{M}\s_-]/gu, '')
    .replace(/\s/g, '-');
}

/** Blanks fenced code blocks (keeping line breaks, so line numbers hold). */
function withoutFences(text: string): string {
  return text.replace(/^( {0,3})(`{3,}|~{3,})[^\n]*\n[\s\S]*?^\1?\2[^\n]*$/gm, (m) =>
    m.replace(/[^\n]/g, ' '),
  );
}

/** Blanks inline code spans too: a link inside backticks is an example, not a link. */
function withoutCode(text: string): string {
  return withoutFences(text).replace(/`[^`\n]*`/g, (m) => ' '.repeat(m.length));
}

/** The anchors of a markdown text: heading slugs (numbered on repeats) and explicit ids. */
export function anchorsOf(markdown: string): Set<string> {
  const out = new Set<string>();
  const seen = new Map<string, number>();
  for (const m of withoutFences(markdown).matchAll(/^ {0,3}#{1,6}\s+(.+?)\s*#*\s*$/gm)) {
    const base = slugOf(m[1]!);
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.add(n === 0 ? base : `${base}-${n}`);
  }
  for (const m of markdown.matchAll(/<a\s+(?:name|id)="([^"]+)"/g)) out.add(m[1]!);
  return out;
}

const lineAt = (text: string, pos: number): number => text.slice(0, pos).split('\n').length;

/** Link targets: `[t](x)`, `![t](x)`, `[id]: x`, `href="x"`, `src="x"`. */
function linksOf(text: string): { target: string; pos: number }[] {
  const prose = withoutCode(text);
  const out: { target: string; pos: number }[] = [];
  for (const m of prose.matchAll(/\]\(\s*<?([^)\s>]+)>?(?:\s+["'(][^)]*)?\)/g)) {
    out.push({ target: m[1]!, pos: m.index });
  }
  for (const m of prose.matchAll(/^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)/gm)) {
    out.push({ target: m[1]!, pos: m.index });
  }
  for (const m of prose.matchAll(/\b(?:href|src)="([^"]+)"/g)) out.push({ target: m[1]!, pos: m.index });
  return out;
}

/** A file the text cites: a `.md` name anywhere, or a source path in backticks. */
const CITED_MD = /(?<![\w/.-])((?:\.{1,2}\/)?[\w-][\w./-]*\.md)(?![\w-])/g;
const CITED_CODE = /`((?:\.{1,2}\/)?[\w-][\w./-]*\.(?:ts|mts|mjs|js|sh))`/g;

export function checkDocs(tree: DocTree): DocProblem[] {
  const out: DocProblem[] = [];
  const fileSet = new Set(tree.files);
  const dirSet = new Set(
    tree.files.flatMap((f) =>
      f
        .split('/')
        .slice(0, -1)
        .map((_, i, a) => a.slice(0, i + 1).join('/')),
    ),
  );
  const anchors = new Map<string, Set<string>>();
  const anchorsIn = (f: string): Set<string> => {
    const a = anchors.get(f) ?? anchorsOf(tree.read(f));
    anchors.set(f, a);
    return a;
  };
  // what is outside the repository: the folder that holds the checkout
  const outside = `${dirname(tree.root.replace(/\/+$/, ''))}/`;
  // as git reads .gitignore: `dist/` (no other slash) names a dist folder at any depth
  // (gateway/dist/ too); `/dist/` or `a/dist/` only that one, from the root
  const isOutput = (p: string): boolean =>
    tree.ignoredDirs.some((pattern) => {
      const d = pattern.replace(/^\//, '');
      if (p === d.slice(0, -1) || p.startsWith(d)) return true;
      const anywhere = !pattern.startsWith('/') && !d.slice(0, -1).includes('/');
      return anywhere && (p.includes(`/${d}`) || p.endsWith(`/${d.slice(0, -1)}`));
    });
  const exists = (p: string): boolean => fileSet.has(p) || dirSet.has(p) || existsSync(join(tree.root, p));

  for (const md of tree.files.filter((f) => f.endsWith('.md'))) {
    const text = tree.read(md);
    const dir = posix.dirname(md);
    const at = (pos: number): string => `${md}:${lineAt(text, pos)}`;

    for (const { target, pos } of linksOf(text)) {
      if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue; // https:, mailto:, …
      const [rawPath, anchor] = target.split('#', 2) as [string, string | undefined];
      const path = decodeURI(rawPath);
      const resolved =
        path === '' ? md : posix.normalize(path.startsWith('/') ? path.slice(1) : posix.join(dir, path));
      if (resolved.startsWith('..') || !exists(resolved)) {
        out.push({ where: at(pos), kind: 'link', detail: `'${target}': ${resolved} does not exist` });
        continue;
      }
      if (anchor !== undefined && resolved.endsWith('.md') && fileSet.has(resolved)) {
        if (!anchorsIn(resolved).has(decodeURIComponent(anchor).toLowerCase())) {
          out.push({
            where: at(pos),
            kind: 'anchor',
            detail: `'${target}': no heading '#${anchor}' in ${resolved}`,
          });
        }
      }
    }

    // link targets were checked above as links
    const unlinked = text
      .replace(/\]\([^)\n]*\)/g, (m) => ' '.repeat(m.length))
      .replace(/^ {0,3}\[[^\]\n]+\]:[^\n]*/gm, (m) => ' '.repeat(m.length));
    const cited = [...unlinked.matchAll(CITED_MD), ...withoutFences(unlinked).matchAll(CITED_CODE)];
    for (const m of cited) {
      const name = m[1]!;
      const bare = name.replace(/^\.\//, '');
      if (isOutput(bare)) continue;
      const found =
        exists(posix.normalize(posix.join(dir, bare))) ||
        exists(bare) ||
        tree.files.some((f) => f.endsWith(`/${bare}`));
      if (!found) {
        out.push({
          where: at(m.index),
          kind: 'cited-file',
          detail: `'${name}' is not a file of the repository`,
        });
      }
    }
    for (const m of text.matchAll(/(?<![\w.-])(\/[\w.-]+(?:\/[\w.<>-]+)+)/g)) {
      const path = m[1]!.replace(/\.+$/, '');
      // run-time places under the temp folder (/tmp/dsm-halab…) are not files of anyone's
      // workspace, wherever the checkout is (a clone under /tmp included)
      if (`${path}/`.startsWith(TEMP)) continue;
      if (`${path}/`.startsWith(outside) && !`${path}/`.startsWith(`${tree.root.replace(/\/+$/, '')}/`)) {
        out.push({ where: at(m.index), kind: 'outside-repo', detail: `'${path}' is outside the repository` });
      }
    }
  }
  const lineOf = (p: DocProblem): [string, number] => {
    const i = p.where.lastIndexOf(':');
    return [p.where.slice(0, i), Number(p.where.slice(i + 1))];
  };
  return out.sort((a, b) => {
    const [fa, la] = lineOf(a);
    const [fb, lb] = lineOf(b);
    return fa === fb ? la - lb : fa < fb ? -1 : 1;
  });
}
