// Preloaded into the cluster nodes with NODE_OPTIONS=--import (Node 20 refuses --cpu-prof in
// NODE_OPTIONS): records a V8 CPU profile from start to exit into $DSM_BENCH_PROFILE_DIR,
// named <role>-<pid>.cpuprofile (open it in Chrome DevTools or speedscope).
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { join } from 'node:path';

const dir = process.env.DSM_BENCH_PROFILE_DIR;
if (dir) {
  const session = new Session();
  session.connect();
  session.post('Profiler.enable');
  session.post('Profiler.setSamplingInterval', { interval: 500 });
  session.post('Profiler.start');
  const role =
    process.argv.find((a) => a === 'storage' || a === 'tracker' || a === 'id' || a === 'gateway') ?? 'node';
  process.once('exit', () => {
    session.post('Profiler.stop', (err, res) => {
      if (!err) writeFileSync(join(dir, `${role}-${process.pid}.cpuprofile`), JSON.stringify(res.profile));
    });
  });
}
