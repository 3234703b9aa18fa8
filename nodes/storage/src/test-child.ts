/**
 * A storage node in its own process, for memory measurements in tests (not exported).
 * argv[2] = JSON config, argv[3] = config folder; prints `{"port":N}` when ready; exits when stdin closes.
 */
import { createLogger, parseConfig } from '@dsm/common';
import { configSchema } from './config.ts';
import { startStorage } from './storage.ts';

const raw = JSON.parse(process.argv[2] ?? '{}') as Record<string, unknown>;
const config = parseConfig(configSchema, raw, process.argv[3] ?? process.cwd());
let next = 0;
const node = await startStorage(config, { log: createLogger('storage-child'), idSource: async () => next++ });
const gc = (globalThis as { gc?: () => void }).gc;
if (gc) setInterval(gc, 25).unref();
process.stdout.write(`${JSON.stringify({ port: node.port })}\n`);
process.stdin.resume();
process.stdin.on('end', () => {
  void node.close().finally(() => process.exit(0));
});
