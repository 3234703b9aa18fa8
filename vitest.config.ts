import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: [
      'shared/*/src/**/*.test.ts',
      'nodes/*/src/**/*.test.ts',
      'cli/src/**/*.test.ts',
      'infra/*/src/**/*.test.ts',
      'gateway/src/**/*.test.ts',
      'test/src/**/*.test.ts',
    ],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    env: { DSM_LOG_LEVEL: process.env.DSM_LOG_LEVEL ?? 'warn' },
    reporters: ['default', './test/src/summary-reporter.ts'],
    pool: 'forks',
  },
});
