import { configDefaults, defineConfig } from 'vitest/config';

/**
 * Two groups, run one after the other. The HA fault scenarios measure failover times
 * (< 2 s outage) against real keepalived and GlusterFS, so they run last and alone: on
 * 2 cores, the rest of the suite running beside them (the chaos run's 200 clients above
 * all) stretches keepalived's checks and VRRP timers and turns a timing figure into noise.
 */
const HA = ['test/src/ha/**/*.test.ts'];

const shared = {
  testTimeout: 60_000,
  hookTimeout: 60_000,
  env: { DSM_LOG_LEVEL: process.env.DSM_LOG_LEVEL ?? 'warn' },
  pool: 'forks' as const,
};

export default defineConfig({
  test: {
    reporters: ['default', './test/src/summary-reporter.ts'],
    projects: [
      {
        test: {
          ...shared,
          name: 'dsm',
          include: [
            'shared/*/src/**/*.test.ts',
            'nodes/*/src/**/*.test.ts',
            'cli/src/**/*.test.ts',
            'infra/*/src/**/*.test.ts',
            'gateway/src/**/*.test.ts',
            'test/src/**/*.test.ts',
          ],
          exclude: [...configDefaults.exclude, ...HA],
          sequence: { groupOrder: 0 },
        },
      },
      {
        test: { ...shared, name: 'ha', include: HA, sequence: { groupOrder: 1 } },
      },
    ],
  },
});
