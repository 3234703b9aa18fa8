#!/usr/bin/env node
// dsm-ping.mjs - health check for keepalived's track_script: exit 0 when the dsm node at
// HOST:PORT answers the protocol PING (command 1) with an empty OK reply, 1 otherwise.
// Plain Node, no dependencies and no TypeScript loader, so one check costs ~40 ms.
//
// Usage: node dsm-ping.mjs HOST:PORT [REPLY_COMMAND] [TIMEOUT_MS=800]
//   REPLY_COMMAND: 100 tracker, 101 id server, 102 storage; omitted = any of them.
// Frame header (10 bytes): body length i64 BE, command u8, status u8 (0 = OK).
import net from 'node:net';

const [addr, replyArg, timeoutArg] = process.argv.slice(2);
const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(addr ?? '');
if (!m) {
  process.stderr.write('usage: node dsm-ping.mjs HOST:PORT [REPLY_COMMAND] [TIMEOUT_MS]\n');
  process.exit(2);
}
const host = m[1] ?? m[2];
const port = Number(m[3]);
const want = replyArg ? [Number(replyArg)] : [100, 101, 102];
const timeoutMs = Number(timeoutArg ?? 800);

const fail = (why) => {
  process.stderr.write(`dsm-ping ${addr}: ${why}\n`);
  process.exit(1);
};
const timer = setTimeout(() => fail(`no reply within ${timeoutMs} ms`), timeoutMs);
const sock = net.connect({ host, port, noDelay: true });
let got = Buffer.alloc(0);
sock.on('connect', () => {
  const frame = Buffer.alloc(10);
  frame.writeUInt8(1, 8); // PING, status 0, length 0
  sock.write(frame);
});
sock.on('data', (c) => {
  got = Buffer.concat([got, c]);
  if (got.length < 10) return;
  clearTimeout(timer);
  const len = got.readBigInt64BE(0);
  const cmd = got.readUInt8(8);
  const status = got.readUInt8(9);
  sock.destroy();
  if (status !== 0) fail(`error reply (status ${status})`);
  if (!want.includes(cmd)) fail(`unexpected reply command ${cmd}`);
  if (len !== 0n) fail(`unexpected body length ${len}`);
  process.exit(0);
});
sock.on('error', (e) => fail(e.message));
sock.on('close', () => fail('connection closed before the reply'));
