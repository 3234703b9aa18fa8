/**
 * Helpers for this package's tests (not exported): an in-memory id source. Backends, the raw
 * frame connection and the other generic test support are in @dsm/testkit.
 */

/** An id source like one id server: a counter per key. */
export function idStub(start = 114_700): {
  source: (key: string) => Promise<number>;
  keys: Map<string, number>;
} {
  const keys = new Map<string, number>();
  return {
    keys,
    source: async (key) => {
      const n = keys.get(key) ?? start;
      keys.set(key, n + 1);
      return n;
    },
  };
}
