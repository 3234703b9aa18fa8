// vip-probe.mjs - poll an HTTP URL over a NEW TCP connection each time and print one
// line per attempt, so a failover can be timed from the client's side.
//
// Usage (run it inside the client's namespace):
//   ip netns exec dsm-c node vip-probe.mjs URL [INTERVAL_MS=20] [TIMEOUT_MS=250] [DURATION_MS=60000]
// Output, one line per attempt, to stdout:
//   <epoch_ms> ok <body-first-line> <latency_ms>
//   <epoch_ms> err <code> <latency_ms>          (ECONNREFUSED, EHOSTUNREACH, TIMEOUT, ...)
// <epoch_ms> is when the attempt started (Date.now(), same clock as `date +%s%3N`).
// Stops after DURATION_MS, or at once on SIGTERM/SIGINT. Exit code 0.
import http from 'node:http';

const [url, intervalArg = '20', timeoutArg = '250', durationArg = '60000'] = process.argv.slice(2);
if (!url) {
  process.stderr.write('usage: node vip-probe.mjs URL [INTERVAL_MS] [TIMEOUT_MS] [DURATION_MS]\n');
  process.exit(2);
}
const interval = Number(intervalArg);
const timeout = Number(timeoutArg);
const until = Date.now() + Number(durationArg);
let stop = false;
for (const sig of ['SIGTERM', 'SIGINT'])
  process.on(sig, () => {
    stop = true;
  });

function attempt() {
  return new Promise((resolve) => {
    const t = Date.now();
    let done = false;
    const finish = (line) => {
      if (done) return;
      done = true;
      process.stdout.write(`${t} ${line} ${Date.now() - t}\n`);
      resolve();
    };
    // agent:false = a fresh connection per attempt: a kept-alive socket would stay
    // glued to the old master and hide (or exaggerate) the failover
    const req = http.get(url, { agent: false, timeout }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => {
        body += c;
      });
      res.on('end', () => finish(`ok ${body.split('\n')[0] || '-'}`));
      res.on('error', (e) => finish(`err ${e.code || e.message}`));
    });
    req.on('timeout', () => {
      req.destroy(Object.assign(new Error('timeout'), { code: 'TIMEOUT' }));
    });
    req.on('error', (e) => finish(`err ${e.code || e.message}`));
  });
}

while (!stop && Date.now() < until) {
  const started = Date.now();
  await attempt();
  const wait = interval - (Date.now() - started);
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
}
