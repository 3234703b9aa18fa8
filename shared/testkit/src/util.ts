import { type Dirent, readdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/** A base port with `n` free consecutive ports after it (tests never use the default ports). */
export async function freePortRange(n: number): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 30000 + Math.floor(Math.random() * 25000);
    let ok = true;
    for (let i = 0; i < n && ok; i++) ok = await canListen(base + i);
    if (ok) return base;
  }
  throw new Error('no free port range found');
}

/** Fills `b` with xorshift32 bytes from `state`; returns the state to continue from. */
function fillPattern(b: Uint8Array, state: number): number {
  let x = state;
  for (let i = 0; i < b.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return x;
}

/** `size` deterministic pseudo-random bytes (the same as `patternChunks(size, seed)` joined). */
export function patternBytes(size: number, seed = 1): Buffer<ArrayBuffer> {
  const b = Buffer.alloc(size);
  fillPattern(b, seed >>> 0 || 1);
  return b;
}

/** `size` deterministic pseudo-random bytes, in chunks of `chunk`. */
export async function* patternChunks(size: number, seed = 1, chunk = 256 * 1024): AsyncGenerator<Uint8Array> {
  let x = seed >>> 0 || 1;
  let left = size;
  while (left > 0) {
    const b = new Uint8Array(Math.min(chunk, left));
    x = fillPattern(b, x);
    left -= b.length;
    yield b;
  }
}

/** An upload source (re-openable) over `patternChunks`. */
export function patternSource(size: number, seed = 1, chunk = 256 * 1024) {
  return {
    size,
    open: () => patternChunks(size, seed, chunk),
  };
}

/** Every chunk of a stream, joined. */
export async function collect(stream: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of stream) parts.push(Buffer.from(c));
  return Buffer.concat(parts);
}

/** What `p` rejects with; throws when it resolves. */
export async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  throw new Error('expected a rejection');
}

/**
 * The regular files under a cluster's data folder (committed files, temps and partials),
 * relative and sorted: without the upload claims' locks and the storages' store write probes
 * (`.probe`, written and removed every few seconds), which come and go on their own. Each entry's
 * type comes from the listing (a stat of a lock removed meanwhile failed with ENOENT in a CI
 * run), and a folder removed between its listing and its own is skipped.
 */
export function storedFiles(dataDir: string): string[] {
  const out: string[] = [];
  const walk = (d: string, rel: string) => {
    let entries: Dirent[];
    try {
      entries = readdirSync(d, { withFileTypes: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT' && rel !== '') return;
      throw e;
    }
    for (const e of entries) {
      const name = e.name;
      if (e.isDirectory()) walk(join(d, name), `${rel}${name}/`);
      else if (!name.endsWith('.lock') && !name.endsWith('.probe')) out.push(`${rel}${name}`);
    }
  };
  walk(dataDir, '');
  return out.sort();
}
