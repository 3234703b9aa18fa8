// A worker's side of ipc-kv.test.ts: a real child process calling the parent's store over IPC.
import { IpcKvStore } from './ipc-kv.ts';

const kv = new IpcKvStore();
const code = (p: Promise<unknown>) =>
  p.then(
    (v) => ({ ok: v }),
    (e: { code?: string }) => ({ code: e.code }),
  );
const out: Record<string, unknown> = {};
await kv.set('a', '1');
out.get = await kv.get('a');
out.missing = await kv.get('nope');
out.nx = [await kv.setIfAbsent('l', 't1', 5000), await kv.setIfAbsent('l', 't2', 5000)];
out.delIfValue = [await kv.delIfValue('l', 't2'), await kv.delIfValue('l', 't1'), await kv.get('l')];
out.incr = [await kv.incrBy('n', 2), await kv.incrBy('n', 3)];
await Promise.all(Array.from({ length: 200 }, () => kv.incrBy('c', 1)));
out.concurrent = await kv.get('c');
out.notInteger = await code(kv.incrBy('a', 1.5));
await kv.set('s', 'x');
out.valueNotInteger = await code(kv.incrBy('s', 1));
out.badTtl = await code(kv.setIfAbsent('z', 'v', -1));
out.expireMissing = await kv.expire('nope', 100);
await kv.set('ttl', 'v', 50);
await new Promise((r) => setTimeout(r, 150));
out.expired = await kv.get('ttl');
out.hugeKey = await code(kv.get('k'.repeat(2 * 1024 * 1024)));
await kv.del('a');
out.deleted = await kv.get('a');
process.send?.({ type: 'result', out });
// once the parent (the primary) is gone, calls fail at once with CACHE_UNAVAILABLE
process.once('disconnect', async () => {
  const after = await code(kv.get('a'));
  process.stdout.write(`${JSON.stringify(after)}\n`);
  await kv.close();
  process.exit(0);
});
