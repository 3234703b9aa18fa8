import { describe, expect, it } from 'vitest';
import { redactUrl } from './redact.ts';

describe('redactUrl', () => {
  it.each([
    // database URLs (was create-db.ts `redact`)
    ['mysql://root:secret@127.0.0.1:3306/dsm', 'mysql://root:***@127.0.0.1:3306/dsm'],
    ['MYSQL://u:secret@h/db?connectTimeoutMs=500', 'MYSQL://u:***@h/db?connectTimeoutMs=500'],
    ['mysql://u:p%40ss@db.example:3307/dsm', 'mysql://u:***@db.example:3307/dsm'],
    // Redis URLs (was redis.ts `redactUrl`): password only, user + password, TLS
    ['redis://:secret@127.0.0.1:6379/0', 'redis://:***@127.0.0.1:6379/0'],
    ['rediss://user:secret@cache:6380/2', 'rediss://user:***@cache:6380/2'],
    // any other scheme (was the KV factory's inline replace)
    ['postgres://u:secret@h/db', 'postgres://u:***@h/db'],
    ['u:secret@host:6379', 'u:***@host:6379'],
  ])('hides the password of %s', (url, want) => {
    expect(redactUrl(url)).toBe(want);
    expect(redactUrl(url)).not.toContain('secret');
  });

  it('hides a password holding an unencoded @, / or : whole', () => {
    for (const pw of ['p@ss', 'a/b@c', 'x:y@z']) {
      const got = redactUrl(`mysql://u:${pw}@db:3306/dsm`);
      expect(got).toBe('mysql://u:***@db:3306/dsm');
    }
  });

  it.each([
    'mysql://root@127.0.0.1:3306/dsm',
    'mysql://127.0.0.1:3306/dsm',
    'redis://127.0.0.1:6379/0',
    'redis://user@cache:6379',
    'sqlite::memory:',
    'sqlite:data/x.db',
    'sqlite:/home/me@corp/x.db',
    'memory:',
    '',
  ])('leaves %j (no password) unchanged', (url) => {
    expect(redactUrl(url)).toBe(url);
  });
});
