import { MemoryKvStore } from '@dsm/kv/memory';

/**
 * A KvStore in the memory of one Worker isolate (the Worker entry's default): the in-process
 * store without its sweep timer (a Worker may not start timers outside a request); TTLs are
 * checked on access, and every `SWEEP_EVERY` writes the expired keys are dropped.
 *
 * Good enough for one isolate (tests, `wrangler dev`); NOT for production, where a Worker runs in
 * many isolates at once and any of them may get the next PATCH of an upload: there the tus state
 * and locks need storage every isolate sees — a Durable Object, or a Redis-compatible store
 * reached over the network.
 */
export class IsolateKvStore extends MemoryKvStore {
  /** `maxKeys`: the gateway's `memoryCacheMaxKeys` (new keys past it are refused: 503). */
  constructor(maxKeys?: number) {
    super({ sweepIntervalMs: 0, maxKeys });
  }
}
