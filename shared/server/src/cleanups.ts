import type { Logger } from '@dsm/common';

/**
 * What a node has opened, closed in reverse order: on a failed start-up (everything opened so
 * far) and on close. Each cleanup runs once; one that fails is logged and the rest still run.
 */
export class Cleanups {
  readonly #stack: { what: string; fn: () => unknown }[] = [];
  readonly #log: Logger;
  #running: Promise<void> | undefined;

  constructor(log: Logger) {
    this.#log = log;
  }

  /** Registers `fn`, to run before everything registered earlier. */
  defer(what: string, fn: () => unknown): void {
    if (this.#running) throw new Error(`cannot defer "${what}": the node is closing`);
    this.#stack.push({ what, fn });
  }

  /** Runs every cleanup, last registered first. Idempotent. */
  run(): Promise<void> {
    this.#running ??= (async () => {
      for (let c = this.#stack.pop(); c; c = this.#stack.pop()) {
        try {
          await c.fn();
        } catch (err) {
          this.#log.warn({ err, what: c.what }, 'cleanup failed');
        }
      }
    })();
    return this.#running;
  }
}
