import { describe, expect, it } from 'vitest';
import { GATEWAY_NODE_FLAGS, missingNodeFlags, NODE_FLAGS, nodeFlagsFor } from './node-flags.ts';

describe('missingNodeFlags', () => {
  it('lists every flag when none is given', () => {
    expect(missingNodeFlags([], '')).toEqual([...NODE_FLAGS]);
  });

  it('finds the flags on the command line or in NODE_OPTIONS', () => {
    expect(missingNodeFlags([...NODE_FLAGS], '')).toEqual([]);
    expect(missingNodeFlags([], ` ${NODE_FLAGS.join(' ')} --enable-source-maps`)).toEqual([]);
  });

  it('counts a flag given with another value (or with underscores) as given', () => {
    expect(
      missingNodeFlags(['--max-semi-space-size=8', '--no-memory-reducer', '--no-incremental-marking'], ''),
    ).toEqual([]);
    expect(
      missingNodeFlags([], '--max_semi_space_size=2 --no_memory_reducer --no-incremental-marking'),
    ).toEqual([]);
    expect(missingNodeFlags(['--max-semi-space-size=8'], '')).toEqual([
      '--no-memory-reducer',
      '--no-incremental-marking',
    ]);
    expect(missingNodeFlags(['--max-old-space-size=512'], '')).toEqual([...NODE_FLAGS]);
  });
});

describe('nodeFlagsFor', () => {
  it('gives the gateway a bigger young generation than the nodes, and checks against its own flags', () => {
    expect(nodeFlagsFor('storage')).toEqual([
      '--max-semi-space-size=1',
      '--no-memory-reducer',
      '--no-incremental-marking',
    ]);
    expect(nodeFlagsFor('tracker')).toEqual(NODE_FLAGS);
    expect(nodeFlagsFor('gateway')).toEqual([
      '--max-semi-space-size=2',
      '--no-memory-reducer',
      '--no-incremental-marking',
    ]);
    // a value the operator chose
    expect(missingNodeFlags([...NODE_FLAGS], '', GATEWAY_NODE_FLAGS)).toEqual([]);
    expect(missingNodeFlags([], '', nodeFlagsFor('gateway'))).toEqual([...GATEWAY_NODE_FLAGS]);
  });
});
