import {
  mkdtempSync,
  readdirSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { OpenFiles } from './open-files.ts';

const root = mkdtempSync(join(tmpdir(), 'dsm-open-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** This process's descriptors open on `path`. */
function fdsOn(path: string): number {
  let n = 0;
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`).startsWith(path)) n++;
    } catch {
      // closed meanwhile
    }
  }
  return n;
}

const settle = () => new Promise((r) => setTimeout(r, 30));
async function read(files: OpenFiles, path: string, checks: string[] = []): Promise<string> {
  const of = await files.open(path, async () => {
    checks.push(path);
  });
  try {
    const b = Buffer.alloc(of.size);
    await of.fh.read(b, 0, of.size, 0);
    return b.toString();
  } finally {
    of.release();
  }
}

describe('OpenFiles (handles kept for the next read)', () => {
  it('opens and checks a file once, then reads it through the kept handle', async () => {
    const files = new OpenFiles();
    const p = join(root, 'a');
    writeFileSync(p, 'hello');
    const checks: string[] = [];
    expect(await read(files, p, checks)).toBe('hello');
    expect(await read(files, p, checks)).toBe('hello');
    await Promise.all([read(files, p, checks), read(files, p, checks)]);
    expect(checks).toEqual([p]);
    expect(fdsOn(p)).toBe(1);
    files.close();
    await settle();
    expect(fdsOn(p)).toBe(0);
  });

  it('never serves a file deleted or replaced behind its back, nor follows a path made a symlink', async () => {
    const files = new OpenFiles();
    const p = join(root, 'b');
    writeFileSync(p, 'one');
    expect(await read(files, p)).toBe('one');
    unlinkSync(p); // deleted through another member
    await expect(read(files, p)).rejects.toMatchObject({ code: 'ENOENT' });
    writeFileSync(p, 'two!'); // the path names another inode now
    expect(await read(files, p)).toBe('two!');
    const outside = join(root, 'outside');
    writeFileSync(outside, 'secret');
    unlinkSync(p);
    symlinkSync(outside, p);
    const checks: string[] = [];
    expect(await read(files, p, checks)).toBe('secret'); // this test's check allows it ...
    expect(checks).toEqual([p]); // ... but it was asked again
    await expect(
      files.open(p, async () => {
        throw new Error('outside the stores');
      }),
    ).rejects.toThrow('outside the stores');
    files.close();
    await settle();
    expect(fdsOn(root)).toBe(0);
  });

  it('lends a kept handle without looking at its path where the files are its own (verify false)', async () => {
    const files = new OpenFiles(128, 10_000, false);
    const p = join(root, 'own');
    writeFileSync(p, 'one');
    const checks: string[] = [];
    expect(await read(files, p, checks)).toBe('one');
    // nothing else writes here; a change behind its back is not looked for: the kept handle
    // still reads the file it opened (the storage's own deletes forget the path first)
    unlinkSync(p);
    writeFileSync(p, 'two!');
    expect(await read(files, p, checks)).toBe('one');
    expect(checks).toEqual([p]);
    files.forget(p); // a delete through this storage
    expect(await read(files, p, checks)).toBe('two!');
    expect(checks).toEqual([p, p]); // opened and checked again
    unlinkSync(p);
    files.forget(p);
    await expect(read(files, p)).rejects.toMatchObject({ code: 'ENOENT' });
    files.close();
    await settle();
    expect(fdsOn(p)).toBe(0);
  });

  it('keeps at most max handles, closes idle ones, and closes a forgotten one only after its read', async () => {
    const files = new OpenFiles(2, 200);
    const ps = ['c1', 'c2', 'c3'].map((n) => join(root, n));
    for (const p of ps) writeFileSync(p, p);
    for (const p of ps) await read(files, p);
    await settle();
    expect(files.size).toBe(2);
    expect(fdsOn(ps[0] as string)).toBe(0); // the least recently used went
    const busy = await files.open(ps[2] as string, async () => {});
    files.forget(ps[2] as string);
    await settle();
    expect(fdsOn(ps[2] as string)).toBe(1); // still being read
    busy.release();
    await settle();
    expect(fdsOn(ps[2] as string)).toBe(0);
    await new Promise((r) => setTimeout(r, 500)); // idle past 200 ms
    expect(files.size).toBe(0);
    expect(fdsOn(root)).toBe(0);
    files.close();
  });
});

describe('OpenFiles with max 0 (a network file system: nothing kept)', () => {
  it('opens, checks and closes the file for each read', async () => {
    const files = new OpenFiles(0);
    const p = join(root, 'z');
    writeFileSync(p, 'zero');
    const checks: string[] = [];
    expect(await read(files, p, checks)).toBe('zero');
    expect(await read(files, p, checks)).toBe('zero');
    expect(checks).toEqual([p, p]);
    await settle();
    expect(fdsOn(p)).toBe(0);
    expect(files.size).toBe(0);
    files.close();
  });
});
