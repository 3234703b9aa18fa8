import { hostname } from 'node:os';
import { join } from 'node:path';
import { ConfigError, parseConfig } from '@dsm/common';
import { describe, expect, it } from 'vitest';
import { configSchema, resolveDatabaseUrl, resolveStorePaths } from './config.ts';
import { fileTableFor, idKeyFor, pathForId, relativePathForId, seedUserHash } from './seed-rules.ts';
import { sniffContentType } from './sniff.ts';

const utf8 = (s: string) => new TextEncoder().encode(s);

describe('seed table sharding', () => {
  // Every row of the seed's table, including the non-ASCII one (signed-char quirk).
  const ROWS: [string, number, string][] = [
    ['tnv001', 0xd69ab821, 't_file_02'],
    ['tnv002', 0xd69ab822, 't_file_03'],
    ['tnv003', 0xd69ab823, 't_file_01'],
    ['a', 0x00000061, 't_file_02'],
    ['abc', 0x1e7896e3, 't_file_03'],
    ['user1', 0xa6ee5a02, 't_file_03'],
    ['é', 0x07fe186b, 't_file_03'],
  ];
  it.each(ROWS)('%s → %i → %s', (user, hash, table) => {
    expect(seedUserHash(utf8(user))).toBe(hash);
    expect(fileTableFor(utf8(user))).toBe(table);
    expect(fileTableFor(user)).toBe(table);
  });

  it('hashes raw bytes: a byte ≥ 0x80 is sign-extended, unlike an unsigned reading', () => {
    expect(utf8('é')).toEqual(new Uint8Array([0xc3, 0xa9]));
    // With unsigned chars the hash of C3 A9 would differ.
    let h = 0;
    h = (h ^ ((h << 7) ^ 0xc3 ^ (h >>> 3))) >>> 0;
    h = (h ^ ~((h << 11) ^ 0xa9 ^ (h >>> 5))) >>> 0;
    expect(h).not.toBe(seedUserHash(utf8('é')));
    expect(seedUserHash(new Uint8Array(0))).toBe(0);
    expect(fileTableFor(new Uint8Array(0))).toBe('t_file_01');
  });
});

describe('file path from an id (the seed layout)', () => {
  const T = 0x65f1560c;
  it.each([
    [0, '000/000/000/65F1560C_000'],
    [511, '000/000/000/65F1560C_1FF'],
    [512, '000/000/001/65F1560C_000'],
    [1301, '000/000/002/65F1560C_115'],
    [400, '000/000/000/65F1560C_190'],
    [134217727, '000/1FF/1FF/65F1560C_1FF'],
  ])('id %i → %s', (id, rel) => {
    expect(relativePathForId(id, T)).toBe(rel);
  });

  it('keeps digits above the fourth (quirk 13): the first level grows wider', () => {
    expect(relativePathForId(512 ** 3, T)).toBe('001/000/000/65F1560C_000');
    expect(relativePathForId(512 ** 4, T)).toBe('200/000/000/65F1560C_000');
    expect(relativePathForId(512 ** 4 * 16 + 1, T)).toBe('2000/000/000/65F1560C_001');
    expect(relativePathForId(512 ** 4, T)).not.toBe(relativePathForId(0, T));
  });

  it('T is the Unix time in uppercase hex; no doubled slash', () => {
    expect(pathForId('../data', 1301, 0x65f1560c + 0.9)).toBe('../data/000/000/002/65F1560C_115');
    expect(pathForId('/srv/data/', 1301, 0x65f1560c)).toBe('/srv/data/000/000/002/65F1560C_115');
    expect(() => relativePathForId(-1, T)).toThrow();
  });

  it('id keys name the group and store index', () => {
    expect(idKeyFor('group001', 0)).toBe('group001:0');
    expect(idKeyFor('group002', 0)).not.toBe(idKeyFor('group001', 0));
  });
});

describe('content sniffing', () => {
  const b = (...parts: (string | number[])[]) =>
    Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'latin1') : Buffer.from(p))));
  it.each([
    [b([0, 0, 0, 0x20], 'ftypisom'), 'video/mp4'],
    [b([0x1a, 0x45, 0xdf, 0xa3, 0x9f, 0x42, 0x86, 0x81, 0x01], 'B\x82\x84webm'), 'video/webm'],
    [b([0x1a, 0x45, 0xdf, 0xa3, 0x9f, 0x42, 0x86, 0x81, 0x01], 'B\x82\x88matroska'), 'video/x-matroska'],
    [b('ID3', [4, 0, 0]), 'audio/mpeg'],
    [b([0xff, 0xfb, 0x90, 0x64]), 'audio/mpeg'],
    [b('OggS', [0, 2]), 'audio/ogg'],
    [b('RIFF', [0, 0, 0, 0], 'WAVEfmt '), 'audio/wav'],
    [b('RIFF', [0, 0, 0, 0], 'WEBPVP8 '), 'image/webp'],
    [b([0x89], 'PNG\r\n', [0x1a, 0x0a]), 'image/png'],
    [b([0xff, 0xd8, 0xff, 0xe0]), 'image/jpeg'],
    [b('GIF89a'), 'image/gif'],
    [b('%PDF-1.7'), 'application/pdf'],
    [b('hello world'), 'application/octet-stream'],
    [b(), 'application/octet-stream'],
  ])('%#: → %s', (head, type) => {
    expect(sniffContentType(head)).toBe(type);
  });
});

describe('config', () => {
  it('every key has a default', () => {
    const c = parseConfig(configSchema, {}, '/etc/dsm');
    expect(c).toMatchObject({
      listen: '127.0.0.1:23000',
      advertisePort: 0,
      hostname: hostname().slice(0, 128),
      group: 'group001',
      storePaths: ['./.dsm/data/group001'],
      trackers: ['127.0.0.1:21000'],
      idServers: ['127.0.0.1:22000'],
      database: 'sqlite:./.dsm/storage.db',
      cache: 'memory:',
      beatIntervalMs: 10_000,
      joinSecret: '',
      maxUploadBytes: 64 * 1024 ** 3,
      reserveBytes: 0,
      uploadExpiryMs: 24 * 3600 * 1000,
      metaCacheTtlMs: 60_000,
      ioChunkBytes: 512 * 1024,
    });
    expect(resolveStorePaths(c)).toEqual(['/etc/dsm/.dsm/data/group001']);
    expect(resolveDatabaseUrl(c)).toBe(`sqlite:${join('/etc/dsm', '.dsm/storage.db')}`);
    expect(resolveDatabaseUrl({ ...c, database: 'mysql://root@db:3306/x' })).toBe('mysql://root@db:3306/x');
    expect(resolveDatabaseUrl({ ...c, database: 'sqlite:/abs/x.db' })).toBe('sqlite:/abs/x.db');
  });

  it.each([
    [{ group: 'group-1' }, 'group'],
    [{ group: 'a'.repeat(17) }, 'group'],
    [{ listen: 'nowhere' }, 'listen'],
    [{ trackers: ['x:0'] }, 'trackers.0'],
    [{ hostname: 'h'.repeat(129) }, 'hostname'],
    [{ joinSecret: 's'.repeat(64) }, 'joinSecret'],
    [{ storePaths: [] }, 'storePaths'],
  ])('refuses %j', (raw, key) => {
    expect(() => parseConfig(configSchema, raw)).toThrow(ConfigError);
    expect(() => parseConfig(configSchema, raw)).toThrow(`"${key}"`);
  });

  it('refuses unknown keys (a typo must not fall back to a default)', () => {
    expect(() => parseConfig(configSchema, { storPaths: ['x'] })).toThrow('unknown config key "storPaths"');
  });

  it('accepts port 0 for listen (tests)', () => {
    expect(parseConfig(configSchema, { listen: '127.0.0.1:0' }).listen).toBe('127.0.0.1:0');
  });
});
