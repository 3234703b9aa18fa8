import type { Server, ServerOptions } from 'node:http';

/**
 * The bounds of every admin HTTP listener (nodes' `admin.listen`, @dsm/server admin.ts, and the
 * gateway's, gateway/src/node.ts): operators' scrapers and browsers, not the public.
 * Headers within 5 s, a request within 10 s, 8 KiB of headers, 64 connections, and a connection
 * silent for 5 s is closed whatever its state: Node's headersTimeout alone did not cut a
 * request head that never ended (slowloris).
 */
export const ADMIN_IDLE_MS = 5000;
export const ADMIN_MAX_CONNECTIONS = 64;
export const ADMIN_SERVER_OPTIONS: ServerOptions = Object.freeze({
  headersTimeout: 5000,
  requestTimeout: 10_000,
  keepAliveTimeout: 5000,
  maxHeaderSize: 8192,
  // the two timeouts above are enforced by a sweep every this many ms (Node's default: 30 s)
  connectionsCheckingInterval: 1000,
});

/**
 * Applies the connection bounds to `server`; `admit(ip)` false (an address outside `allowFrom`)
 * closes the connection at once.
 */
export function boundAdminServer(server: Server, admit: (ip: string) => boolean = () => true): void {
  server.maxConnections = ADMIN_MAX_CONNECTIONS;
  server.on('connection', (socket) => {
    const ip = socket.remoteAddress ?? '';
    if (!admit(ip.startsWith('::ffff:') ? ip.slice(7) : ip)) socket.destroy();
    // silence is bounded whatever the request's state (a head that never ends included)
    else socket.setTimeout(ADMIN_IDLE_MS, () => socket.destroy());
  });
}
