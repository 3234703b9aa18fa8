// The `dsm` command itself (its sources through tsx, and the bundle `npm run build` makes) for
// what needs no cluster: --version, and where the HMAC secret of `dsm token` / `dsm sign` comes
// from. The verbs against a running cluster are in test/src/cli.test.ts.
import { execFile, execFileSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { secretFrom, UsageError } from './client-config.ts';

const REPO = fileURLToPath(new URL('../..', import.meta.url));
const DSM = join(REPO, 'cli', 'bin', 'dsm.js');
const VERSION = (JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { version: string }).version;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function run(entry: string, args: string[], env: Record<string, string | undefined> = {}): Promise<Run> {
  return new Promise((resolve) => {
    const full = { ...process.env, ...env };
    for (const k of Object.keys(env)) if (env[k] === undefined) delete full[k];
    execFile(process.execPath, [entry, ...args], { env: full, timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err ? (err as { code?: unknown }).code : 0;
      resolve({ code: typeof code === 'number' ? code : -1, stdout, stderr });
    });
  });
}

const dsm = (args: string[], env: Record<string, string | undefined> = {}) =>
  run(DSM, args, { DSM_TOKEN_SECRET: undefined, DSM_SIGNING_SECRET: undefined, ...env });

mkdirSync(join(REPO, '.dsm'), { recursive: true }); // git-ignored
const tmp = mkdtempSync(join(REPO, '.dsm', 'cli-test-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Checks an HS256 JWT's signature with `secret` and returns its claims. */
function verifyJwt(token: string, secret: string): Record<string, unknown> {
  const [h, p, sig] = token.split('.') as [string, string, string];
  const want = createHmac('sha256', secret).update(`${h}.${p}`).digest('base64url');
  if (want !== sig) throw new Error('the token is not signed with this secret');
  return JSON.parse(Buffer.from(p, 'base64url').toString()) as Record<string, unknown>;
}

/** Checks a signed download URL (`?exp&kid&sig`, HMAC of "path\nexp") with `secret`. */
function verifySigned(url: string, secret: string): URL {
  const u = new URL(url);
  const exp = u.searchParams.get('exp');
  const want = createHmac('sha256', secret).update(`${u.pathname}\n${exp}`).digest('base64url');
  if (u.searchParams.get('sig') !== want) throw new Error('the URL is not signed with this secret');
  return u;
}

describe('dsm --version', () => {
  it('prints the package version and the Node version, as text and as JSON', async () => {
    for (const args of [['--version'], ['-V'], ['version']]) {
      const r = await dsm(args);
      expect(r.code).toBe(0);
      expect(r.stdout).toBe(`dsm ${VERSION}\nnode ${process.version}\n`);
      expect(r.stderr).toBe('');
    }
    const j = await dsm(['--version', '--json']);
    expect(JSON.parse(j.stdout)).toEqual({ name: 'dsm', version: VERSION, node: process.version });
  });

  it('prints the same version from the bundle npm run build makes', async () => {
    // inside the repository: the bundle loads its external packages from node_modules
    const out = join(tmp, 'bundle', 'dsm.mjs');
    mkdirSync(join(tmp, 'bundle'));
    execFileSync(process.execPath, [join(REPO, 'cli', 'build.mjs'), out], { stdio: 'pipe' });
    const r = await run(out, ['--version']);
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe(`dsm ${VERSION}\nnode ${process.version}\n`);
    // the version is compiled in: no package.json is read at run time (none beside the bundle)
    expect(readFileSync(out, 'utf8') + readChunks(join(tmp, 'bundle'))).toContain(JSON.stringify(VERSION));
  }, 60_000);
});

function readChunks(dir: string): string {
  const files = execFileSync('find', [join(dir, 'chunks'), '-name', '*.mjs'], { encoding: 'utf8' })
    .split('\n')
    .filter(Boolean);
  return files.map((f) => readFileSync(f, 'utf8')).join('\n');
}

describe('the HMAC secret of dsm token and dsm sign', () => {
  const secretFile = join(tmp, 'secret');
  writeFileSync(secretFile, 'file-secret-0123456789abcdef\n', { mode: 0o600 });

  it('dsm token takes it from --secret-file, then $DSM_TOKEN_SECRET; --secret works with a warning', async () => {
    const fromFile = await dsm(['token', '--secret-file', secretFile, '--app', 'a1', '--user', 'u1']);
    expect(fromFile.stderr).toBe('');
    expect(fromFile.code).toBe(0);
    expect(verifyJwt(fromFile.stdout.trim(), 'file-secret-0123456789abcdef')).toMatchObject({
      app: 'a1',
      sub: 'u1',
    });

    const fromEnv = await dsm(['token', '--app', 'a2', '--user', 'u2'], {
      DSM_TOKEN_SECRET: 'env-secret-xyz',
    });
    expect(fromEnv.code).toBe(0);
    expect(fromEnv.stderr).toBe('');
    expect(verifyJwt(fromEnv.stdout.trim(), 'env-secret-xyz')).toMatchObject({ app: 'a2', sub: 'u2' });
    // the file wins over the environment
    const both = await dsm(['token', '--secret-file', secretFile], { DSM_TOKEN_SECRET: 'env-secret-xyz' });
    expect(() => verifyJwt(both.stdout.trim(), 'file-secret-0123456789abcdef')).not.toThrow();

    const argv = await dsm(['token', '--secret', 'argv-secret']);
    expect(argv.code).toBe(0);
    expect(argv.stderr).toMatch(/^dsm: warning: --secret on the command line is visible .*ps.*\n$/);
    expect(() => verifyJwt(argv.stdout.trim(), 'argv-secret')).not.toThrow();
    // the signing secret of sign is not the token secret
    const wrongVar = await dsm(['token'], { DSM_SIGNING_SECRET: 'x' });
    expect(wrongVar.code).toBe(2);
    expect(wrongVar.stderr).toContain('$DSM_TOKEN_SECRET');
  });

  it('dsm sign takes it from --secret-file or $DSM_SIGNING_SECRET', async () => {
    const base = ['sign', 'AAAA', '--kid', 'k1', '--base', 'http://media.example'];
    const fromFile = await dsm([...base, '--secret-file', secretFile]);
    expect(fromFile.stderr).toBe('');
    expect(fromFile.code).toBe(0);
    const u = verifySigned(fromFile.stdout.trim(), 'file-secret-0123456789abcdef');
    expect(u.pathname).toBe('/files/AAAA');
    expect(u.searchParams.get('kid')).toBe('k1');

    const fromEnv = await dsm(base, { DSM_SIGNING_SECRET: 'env-sign-secret' });
    expect(fromEnv.code).toBe(0);
    expect(() => verifySigned(fromEnv.stdout.trim(), 'env-sign-secret')).not.toThrow();
    expect(() => verifySigned(fromEnv.stdout.trim(), 'file-secret-0123456789abcdef')).toThrow();

    const none = await dsm(base);
    expect(none.code).toBe(2);
    expect(none.stderr).toContain('--secret-file FILE or $DSM_SIGNING_SECRET');
    const missing = await dsm([...base, '--secret-file', join(tmp, 'nope')]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/^dsm: cannot read the secret file .*nope/);
  });

  it('secretFrom: one trailing newline dropped, empty and oversized files and both flags refused', () => {
    const warned: string[] = [];
    const crlf = join(tmp, 'crlf');
    writeFileSync(crlf, 's3cret\r\n');
    expect(secretFrom({ 'secret-file': crlf }, 'X', {})?.secret).toBe('s3cret');
    const empty = join(tmp, 'empty');
    writeFileSync(empty, '\n');
    expect(() => secretFrom({ 'secret-file': empty }, 'X', {})).toThrow(/is empty/);
    const big = join(tmp, 'big');
    writeFileSync(big, Buffer.alloc(65 * 1024, 0x61));
    expect(() => secretFrom({ 'secret-file': big }, 'X', {})).toThrow(/larger than/);
    expect(() => secretFrom({ 'secret-file': crlf, secret: 'a' }, 'X', {})).toThrow(UsageError);
    expect(secretFrom({}, 'X', { X: 'from-env' })).toEqual({ secret: 'from-env', source: '$X' });
    expect(secretFrom({}, 'X', {})).toBeUndefined();
    expect(secretFrom({ secret: 'a' }, 'X', { X: 'b' }, (m) => warned.push(m))?.secret).toBe('a');
    expect(warned).toHaveLength(1);
  });
});
