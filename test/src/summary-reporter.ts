import type { SerializedError } from 'vitest';
import type { Reporter, TestModule } from 'vitest/node';

/**
 * Prints one plain line `N passed, N failed` at the very end of a run (CI reads it).
 * Counts test cases; a file that failed to load counts as one failure, and so does each
 * unhandled error (vitest's own summary shows those apart from the tests, yet they fail the run).
 */
export default class SummaryReporter implements Reporter {
  onTestRunEnd(
    testModules: ReadonlyArray<TestModule>,
    unhandledErrors: ReadonlyArray<SerializedError> = [],
  ): void {
    let passed = 0;
    let failed = 0;
    let skipped = 0;
    for (const m of testModules) {
      let cases = 0;
      for (const t of m.children.allTests()) {
        cases++;
        const s = t.result().state;
        if (s === 'passed') passed++;
        else if (s === 'failed') failed++;
        else skipped++;
      }
      if (cases === 0 || m.state() === 'failed') {
        const errors = m.errors().length;
        if (cases === 0 || errors > 0) failed += Math.max(1, errors);
      }
    }
    failed += unhandledErrors.length;
    process.stdout.write(`\n${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}\n`);
  }
}
