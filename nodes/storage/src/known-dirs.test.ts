import { mkdirSync, mkdtempSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { KnownDirs } from './fs-util.ts';

const root = mkdtempSync(join(tmpdir(), 'dsm-dirs-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** This process's open descriptors on paths under `dir`. */
function openUnder(dir: string): string[] {
  const out: string[] = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      const target = readlinkSync(`/proc/self/fd/${fd}`);
      if (target === dir || target.startsWith(`${dir}/`)) out.push(target);
    } catch {
      // closed meanwhile
    }
  }
  return out;
}

const settle = () => new Promise((r) => setTimeout(r, 50));

describe('KnownDirs.sync (folder fsyncs through kept handles)', () => {
  it('keeps one handle per folder, at most maxOpen, and closes them on forget and close', async () => {
    const dirs = new KnownDirs(4096, 4);
    const names = Array.from({ length: 6 }, (_, i) => join(root, `d${i}`));
    for (const d of names) mkdirSync(d);
    await dirs.sync(names[0] as string);
    await dirs.sync(names[0] as string);
    await Promise.all([dirs.sync(names[0] as string), dirs.sync(names[0] as string)]);
    expect(openUnder(root)).toEqual([names[0]]);
    for (const d of names) await dirs.sync(d);
    await settle();
    // the 4 most recently synced stay open
    expect(openUnder(root).sort()).toEqual(names.slice(2).sort());
    dirs.forget(names[5] as string);
    await settle();
    expect(openUnder(root).sort()).toEqual(names.slice(2, 5).sort());
    await dirs.close();
    expect(openUnder(root)).toEqual([]);
  });

  it('a folder created again after forget is synced through a new handle', async () => {
    const dirs = new KnownDirs();
    const d = join(root, 'again');
    mkdirSync(d);
    await dirs.sync(d);
    rmSync(d, { recursive: true });
    mkdirSync(d);
    dirs.forget(d);
    await dirs.sync(d);
    await settle();
    expect(openUnder(root)).toEqual([d]); // not "(deleted)": the new folder
    await dirs.close();
  });

  it('a missing folder is an error, and nothing stays open for it', async () => {
    const dirs = new KnownDirs();
    await expect(dirs.sync(join(root, 'nope'))).rejects.toMatchObject({ code: 'ENOENT' });
    expect(openUnder(root)).toEqual([]);
    await dirs.close();
  });
});
