import { destination, type Logger, pino } from 'pino';

export type { Logger };

/**
 * Bytes of log lines a process holds while its stderr is slower than its logging (a stalled
 * pipe, a slow disk); lines beyond it are dropped, not queued without end.
 */
export const LOG_BUFFER_BYTES = 8 * 1024 * 1024;

let stderr: ReturnType<typeof destination> | null = null;

/**
 * The process's one log destination: stderr, written asynchronously. A synchronous write per
 * line (pino's default) cost the gateway about a fifth of its CPU at 25,000 small GETs/s (the
 * access log line); written asynchronously, the lines of one turn of the event loop go in one
 * write, and a stderr that stops taking lines no longer stops the event loop. Lines still in
 * the buffer at exit are written synchronously then (pino's exit hook); a `kill -9` loses
 * what was not written yet. One destination per process, so that two loggers' writes to fd 2
 * cannot interleave within a line.
 */
function stderrDestination(): ReturnType<typeof destination> {
  stderr ??= destination({ dest: 2, sync: false, maxLength: LOG_BUFFER_BYTES });
  return stderr;
}

/**
 * Structured JSON logs to stderr (stdout stays for command output). Level from DSM_LOG_LEVEL
 * (default info; tests set warn).
 */
export function createLogger(name: string, bindings: Record<string, unknown> = {}): Logger {
  const level = process.env.DSM_LOG_LEVEL ?? 'info';
  return pino({ name, level, base: { pid: process.pid, ...bindings } }, stderrDestination());
}
