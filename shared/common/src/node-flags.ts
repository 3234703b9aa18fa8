/**
 * Flags of the `node` that runs a dsm node process (tracker, storage, id server, gateway). Every
 * way a node is started passes them: the launcher of `dsm up`, of the whole-cluster tests and of
 * the bench (`cli/src/cluster.ts`), and the systemd units rendered by `infra/terraform`. A node
 * started without them says so in its log (`dsm <role>`, cli/src/main.ts).
 *
 * `--max-semi-space-size=1` keeps V8's young generation at 1 MiB per semi-space (Node 20 lets it
 * grow to 16). A streaming node's garbage is mostly 64 KiB socket read buffers held by small
 * objects: with a big young generation they wait for a scavenge until about 32 MiB of them have
 * piled up, and glibc keeps the memory after they are freed. With 1 MiB, scavenges come every
 * few chunks: 20 MiB less RSS peak for a storage streaming 1 GiB, 100 MiB less for a gateway
 * with 50 streams, and no loss of throughput (less CPU per GiB, if anything; measured figures in
 * docs/performance.md). A storage receiving an upload allocates so little on the heap per chunk
 * that even 1 MiB filled only every 20 MiB or so: it collects its young generation itself every
 * 4 MiB of a body (`collectYoung`, nodes/storage/src/fs-util.ts).
 *
 * `--no-memory-reducer`: V8's memory reducer collects the whole heap when it judges the process
 * idle. A gateway that had been idle for two minutes (as in a full bench run, whose storage
 * sections come first) then ran 43-47 mark-compacts per GiB of a 1 GiB GET, 1.6-2.0 s of user
 * CPU per GiB instead of 0.3-0.5; with the flag, 0-12 (and the full bench's GET 1 GiB rows,
 * missed at 2.4-2.8 CPU-s per GiB, came to 1.15). The other nodes get it too: their heaps are
 * 12-20 MB, so what it would give back after a burst is small.
 *
 * `--no-incremental-marking`: a storage receiving a 1 GiB upload started
 * incremental marking every 50 ms or so in about half of the uploads, with or without the
 * memory reducer ("allocation limit", with 9 MB of its 20 MB limit still free): 45-77
 * mark-compacts per GiB, user CPU 2.6-2.7 s per GiB instead of 1.3. Without incremental marking
 * a full collection comes only when the old generation reaches its limit: 0 mark-compacts in 13
 * of 13 uploads; interleaved, storage CPU per GiB 2.4-2.5 s against 3.7-3.9 (and 3.7 in the one
 * run that had no storm). The cost is that a full collection, when one comes, is one pause
 * (12 ms for this 20 MB heap) instead of several short ones: rare here, since the heap hardly
 * grows (one in a 10 s run of 4 KiB uploads at 2,500/s).
 */
export const NODE_FLAGS: readonly string[] = [
  '--max-semi-space-size=1',
  '--no-memory-reducer',
  '--no-incremental-marking',
];

/**
 * The gateway's flags: a 2 MiB semi-space, no memory reducer and no incremental marking (above,
 * measured there). Incremental marking did to the gateway what it did to the storage: in about
 * half of the gateway processes (a fresh one each time, a 1 GiB raw POST /files with curl,
 * 2026-12-05), a mark-compact every
 * 50 ms through the whole upload ("finalize incremental marking via task; GC in old space
 * requested", 13-49 per GiB, at 15-17 MB of heap) and 1.2-1.6 s of user CPU per GiB instead of
 * 0.5 (the bench's POST 1 GiB swung between 0.58× and 0.82× of the storage-protocol upload with
 * it); without it, 6 of 6 processes ran 0-1 mark-compacts and 0.45-0.56 s. A full collection is
 * then one pause: about 10 ms for the gateway's 19 MB heap after start-up (its caches' bytes
 * are off the heap; the stat cache's and tus state's objects are on it). Its
 * small requests (a 4 KiB GET allocates some 50 KiB of short-lived objects: Hono's context,
 * headers, the reply) filled a 1 MiB young generation every few requests, promoting the objects of the requests in flight each time: a quarter of
 * its CPU went to GC. Measured (gateway CPU per 4 KiB GET, cache off, 2 runs each): 250-281 µs
 * at 1 MiB, 212-235 at 2, 181-212 at 4; 4 MiB made a gateway with 50 streams peak at about
 * 200 MiB (docs/performance.md), 2 keeps it under its bound.
 */
export const GATEWAY_NODE_FLAGS: readonly string[] = [
  '--max-semi-space-size=2',
  '--no-memory-reducer',
  '--no-incremental-marking',
];

/** The flags a node of `role` runs with (every launcher and unit asks here). */
export function nodeFlagsFor(role: string): readonly string[] {
  return role === 'gateway' ? GATEWAY_NODE_FLAGS : NODE_FLAGS;
}

/** The flags (`nodeFlagsFor(role)`) that this process was started without (neither on its command line nor in NODE_OPTIONS). */
export function missingNodeFlags(
  execArgv: readonly string[] = process.execArgv,
  nodeOptions: string = process.env.NODE_OPTIONS ?? '',
  flags: readonly string[] = NODE_FLAGS,
): string[] {
  const given = [...execArgv, ...nodeOptions.split(/\s+/)];
  // a flag given with another value counts as given: the operator chose it
  const name = (f: string) => f.split('=')[0]?.replace(/_/g, '-');
  return flags.filter((f) => !given.some((g) => name(g) === name(f)));
}
