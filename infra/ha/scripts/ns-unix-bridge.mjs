// ns-unix-bridge.mjs - let a process in the HOST network namespace (the Node test
// runner) talk TCP to an address that exists only inside a lab namespace.
// Run it INSIDE the namespace; it listens on a Unix socket (a file path: visible from
// every network namespace) and pipes each connection to HOST:PORT over TCP.
//
// Usage: ip netns exec dsm-c node ns-unix-bridge.mjs SOCKET_PATH HOST PORT
//   prints "ready SOCKET_PATH" on stdout once listening; stops on SIGTERM/SIGINT and
//   removes the socket file.
// Host side (Node):
//   http.get({ socketPath: SOCKET_PATH, path: '/' }, ...)        // HTTP
//   net.connect({ path: SOCKET_PATH })                           // any TCP protocol
// Every connection is a new TCP connection from the namespace, so it follows a VIP.

import fs from 'node:fs';
import net from 'node:net';

const [sock, host, portArg] = process.argv.slice(2);
if (!sock || !host || !portArg) {
  process.stderr.write('usage: node ns-unix-bridge.mjs SOCKET_PATH HOST PORT\n');
  process.exit(2);
}
fs.rmSync(sock, { force: true });
const server = net.createServer((client) => {
  const upstream = net.connect({ host, port: Number(portArg) });
  client.pipe(upstream).pipe(client);
  const close = () => {
    client.destroy();
    upstream.destroy();
  };
  client.on('error', close);
  upstream.on('error', close);
});
server.listen(sock, () => process.stdout.write(`ready ${sock}\n`));
const stop = () =>
  server.close(() => {
    fs.rmSync(sock, { force: true });
    process.exit(0);
  });
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
