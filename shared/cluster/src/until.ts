/**
 * Polls `cond` every `stepMs` until it returns a truthy value, and returns that value; throws
 * after `timeoutMs`. An error thrown by `cond` counts as "not yet" (a service still starting
 * refuses connections) and is named in the timeout's message. The one polling helper of the
 * launcher, the HA lab and the tests (@dsm/testkit re-exports it).
 */
export async function until<T>(
  cond: () => T | Promise<T>,
  timeoutMs = 3000,
  stepMs = 10,
  what = 'condition',
): Promise<Exclude<T, false | 0 | '' | null | undefined>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await cond();
      if (v) return v as Exclude<T, false | 0 | '' | null | undefined>;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      const why =
        last === undefined ? '' : ` (last error: ${last instanceof Error ? last.message : String(last)})`;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${why}`);
    }
    await new Promise((r) => setTimeout(r, stepMs));
  }
}
