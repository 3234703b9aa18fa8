import { destination, type Logger, pino } from 'pino';

export type { Logger };

/**
 * Structured JSON logs to stderr (stdout stays for command output). Level from DSM_LOG_LEVEL
 * (default info; tests set warn).
 */
export function createLogger(name: string, bindings: Record<string, unknown> = {}): Logger {
  const level = process.env.DSM_LOG_LEVEL ?? 'info';
  return pino({ name, level, base: { pid: process.pid, ...bindings } }, destination(2));
}
