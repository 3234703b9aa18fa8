import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { ConfigError, parseConfig, parseHostPort } from './config.ts';

const schema = z.object({
  listen: z.string().default('127.0.0.1:1'),
  step: z.number().int().min(10).default(100),
});

describe('config', () => {
  it('fills defaults and freezes the result', () => {
    const c = parseConfig(schema, {});
    expect(c.step).toBe(100);
    expect(Object.isFrozen(c)).toBe(true);
  });
  it('names the bad key in one line', () => {
    expect(() => parseConfig(schema, { step: 5 })).toThrow(/^config key "step": /);
    expect(() => parseConfig(schema, { step: 5 })).toThrow(ConfigError);
  });
  it('refuses unknown keys instead of ignoring a typo', () => {
    expect(() => parseConfig(schema, { stepp: 10 })).toThrow('unknown config key "stepp"');
  });
  it('parses host:port and refuses nonsense', () => {
    expect(parseHostPort('[::1]:80')).toEqual({ host: '::1', port: 80 });
    expect(() => parseHostPort('x:99999')).toThrow(ConfigError);
  });
});
