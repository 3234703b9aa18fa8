import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { z } from 'zod';
import { DsmError, ErrorCode, messageOf } from './errors.ts';

export class ConfigError extends DsmError {
  constructor(message: string) {
    super(ErrorCode.CONFIG, message);
    this.name = 'ConfigError';
  }
}

/**
 * Reads a JSON config file (or none), validates it with the component's schema, and freezes it.
 * A bad value stops start-up with one line naming the key.
 */
export function loadConfig<S extends z.ZodType>(
  schema: S,
  file?: string,
  overrides: Record<string, unknown> = {},
): Readonly<z.infer<S>> & { configDir: string } {
  let raw: Record<string, unknown> = {};
  let configDir = process.cwd();
  if (file) {
    const path = resolve(file);
    configDir = dirname(path);
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (e) {
      throw new ConfigError(`cannot read config file ${path}: ${messageOf(e)}`);
    }
    try {
      raw = JSON.parse(text) as Record<string, unknown>;
    } catch (e) {
      throw new ConfigError(`config file ${path} is not valid JSON: ${messageOf(e)}`);
    }
  }
  return parseConfig(schema, { ...raw, ...overrides }, configDir);
}

export function parseConfig<S extends z.ZodType>(
  schema: S,
  raw: unknown,
  configDir = process.cwd(),
): Readonly<z.infer<S>> & { configDir: string } {
  // Unknown keys are refused: a typo must not silently fall back to a default.
  const strict = schema instanceof z.ZodObject ? (schema.strict() as unknown as S) : schema;
  // A config that went through here once may come back (a node re-validating what it was given).
  let input = raw;
  if (input && typeof input === 'object' && 'configDir' in input) {
    const { configDir: dir, ...rest } = input as Record<string, unknown>;
    if (typeof dir === 'string') configDir = dir;
    input = rest;
  }
  const r = strict.safeParse(input);
  if (!r.success) {
    const issue = r.error.issues[0];
    if (issue?.code === 'unrecognized_keys') {
      const keys = (issue as { keys?: string[] }).keys ?? [];
      const at = issue.path.length ? `${issue.path.join('.')}.` : '';
      throw new ConfigError(`unknown config key "${at}${keys[0] ?? '?'}"`);
    }
    const key = issue?.path.join('.') || '(root)';
    throw new ConfigError(`config key "${key}": ${issue?.message ?? 'invalid'}`);
  }
  return Object.freeze({ ...(r.data as object), configDir }) as Readonly<z.infer<S>> & { configDir: string };
}

/** Makes a relative `sqlite:` path absolute against `configDir`; other URLs come back as they are. */
export function resolveSqliteUrl(url: string, configDir: string): string {
  const u = url.trim();
  const m = /^sqlite:(.*)$/is.exec(u);
  if (!m) return u;
  const path = m[1] as string;
  if (path === '' || path === ':memory:' || isAbsolute(path)) return u;
  return `sqlite:${resolve(configDir, path)}`;
}

/** `host:port` strings, as in the seed's address lists. */
export function parseHostPort(s: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(s.trim());
  const port = m ? Number(m[3]) : Number.NaN;
  if (!m || port < 1 || port > 65535) throw new ConfigError(`not a host:port address: "${s}"`);
  return { host: (m[1] ?? m[2]) as string, port };
}
