/**
 * The I/O timeout of a connection that waits for a server: it fires once the owner has been
 * waiting (`waiting()`) with no activity (`stamp`) for `limitMs`. One timer per owner, not one
 * per read or request: activity only stamps a time; the timer, armed when a wait starts
 * (`watch`) and re-armed for the rest when it fires early, calls `onSilent` at most once per
 * silence. Used by Connection (a read waiting for its reply) and Pipe (requests in flight).
 */
export class SilenceWatch {
  readonly #limitMs: number;
  readonly #waiting: () => boolean;
  readonly #onSilent: () => void;
  #at = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;

  constructor(limitMs: number, waiting: () => boolean, onSilent: () => void) {
    this.#limitMs = limitMs;
    this.#waiting = waiting;
    this.#onSilent = onSilent;
  }

  /** Something was sent or received now: the silence starts again. */
  stamp(now = Date.now()): void {
    this.#at = now;
  }

  /** A wait starts: the timer runs (if it does not already). */
  watch(): void {
    if (this.#timer === undefined) this.#arm(this.#limitMs);
  }

  /** The owner is done (closed): no more firing. */
  stop(): void {
    if (this.#timer === undefined) return;
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #arm(ms: number): void {
    const t = setTimeout(this.#fire, ms);
    // Node: an idle pooled connection does not keep the process alive (Workers: a number)
    if (typeof t === 'object' && t !== null && 'unref' in t) t.unref();
    this.#timer = t;
  }

  readonly #fire = (): void => {
    this.#timer = undefined;
    // not waiting (between requests, or a consumer slow to ask for more): not silence; the next
    // wait arms the timer again
    if (!this.#waiting()) return;
    const quiet = Date.now() - this.#at;
    if (quiet < this.#limitMs) {
      this.#arm(this.#limitMs - quiet);
      return;
    }
    this.#onSilent();
  };
}
