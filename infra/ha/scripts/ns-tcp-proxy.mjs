// ns-tcp-proxy.mjs - a connect proxy that lets a process in the HOST network namespace (the
// test runner) open TCP connections to any address inside a lab namespace. Run it INSIDE the
// namespace (nsenter --net=/run/netns/NS node ns-tcp-proxy.mjs SOCKET_PATH); it listens on a
// Unix socket (a file: visible from every network namespace).
//
// Per connection, the client first sends one line "HOST PORT TIMEOUT_MS\n". The proxy opens a
// TCP connection from the namespace and answers one byte: 0x01 = connected (then the bytes
// are piped both ways), or 0x00 followed by the error text, then closes. So a refused or
// unreachable address is a connect error for the caller, as with a direct connection.
// Every connection is a new TCP connection, so it follows a VIP.
// Prints "ready SOCKET_PATH" once listening; stops on SIGTERM/SIGINT, removing the socket.
import fs from 'node:fs';
import net from 'node:net';

const sock = process.argv[2];
if (!sock) {
  process.stderr.write('usage: node ns-tcp-proxy.mjs SOCKET_PATH\n');
  process.exit(2);
}
fs.rmSync(sock, { force: true });
const server = net.createServer((client) => {
  let head = Buffer.alloc(0);
  const onHead = (c) => {
    head = Buffer.concat([head, c]);
    const nl = head.indexOf(10);
    if (nl < 0) {
      if (head.length > 300) client.destroy();
      return;
    }
    client.off('data', onHead);
    client.pause();
    const [host, port, timeout] = head.subarray(0, nl).toString().trim().split(' ');
    const rest = head.subarray(nl + 1);
    const upstream = net.connect({ host, port: Number(port), noDelay: true });
    let connected = false;
    const timer = setTimeout(
      () => upstream.destroy(new Error(`connect timed out after ${timeout} ms`)),
      Number(timeout) || 5000,
    );
    upstream.once('connect', () => {
      clearTimeout(timer);
      connected = true;
      client.write(Buffer.from([1]));
      if (rest.length) upstream.write(rest);
      client.pipe(upstream).pipe(client);
      client.resume();
    });
    upstream.on('error', (e) => {
      clearTimeout(timer);
      if (!connected) client.end(Buffer.concat([Buffer.from([0]), Buffer.from(e.message)]));
      else client.destroy();
    });
    upstream.on('close', (hadError) => {
      if (connected && hadError) client.destroy();
    });
    client.on('error', () => upstream.destroy());
    client.on('close', () => upstream.destroy());
  };
  client.on('data', onHead);
  client.on('error', () => client.destroy());
});
server.listen(sock, () => process.stdout.write(`ready ${sock}\n`));
const stop = () =>
  server.close(() => {
    fs.rmSync(sock, { force: true });
    process.exit(0);
  });
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
