import { messageOf } from './errors.ts';
import type { Logger } from './logger.ts';

export interface RunningNode {
  /** What the launcher needs to know; printed as one JSON line on stdout when ready. */
  ready: Record<string, unknown>;
  close(): Promise<void>;
}

/**
 * Runs a node process: starts it, prints one `{"ready":…}` line on stdout (the launcher of
 * `dsm up` and the tests wait for it), and stops cleanly on SIGINT/SIGTERM.
 */
export interface RunNodeOptions {
  /** How long `close()` may take after a signal before the process exits anyway (default 10 s). */
  forceExitMs?: number;
  /** The log line of a stop (default "stopping"). */
  stoppingMessage?: string;
}

export async function runNode(
  log: Logger,
  start: () => Promise<RunningNode>,
  opts: RunNodeOptions = {},
): Promise<void> {
  let node: RunningNode;
  try {
    node = await start();
  } catch (e) {
    log.fatal({ err: e }, 'start-up failed');
    process.stderr.write(`error: ${messageOf(e)}\n`);
    process.exit(1);
  }
  process.stdout.write(`${JSON.stringify({ ready: true, ...node.ready })}\n`);
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, opts.stoppingMessage ?? 'stopping');
    const force = setTimeout(() => process.exit(1), opts.forceExitMs ?? 10_000);
    force.unref();
    try {
      await node.close();
    } finally {
      process.exit(0);
    }
  };
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));
  // A node started by `dsm up` (or a test) stops when its launcher is gone, even after a SIGKILL
  // of the launcher: no orphans holding ports.
  const parent = Number(process.env.DSM_PARENT_PID);
  if (parent > 0) {
    const watch = setInterval(() => {
      try {
        process.kill(parent, 0);
      } catch {
        clearInterval(watch);
        void stop('parent exited');
      }
    }, 1000);
    watch.unref();
  }
}
