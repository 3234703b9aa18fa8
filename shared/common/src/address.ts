// a namespace import, not `{ z }`: esbuild then keeps only what is used (the Worker bundle
// would carry every zod locale otherwise, gateway/README.md "Cloudflare Worker")
import * as z from 'zod';

/** `host:port`, IPv6 hosts in brackets. Runtime-neutral (the Worker gateway uses it too). */
const HOST_PORT = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/;

function split(s: string): { host: string; port: number } | null {
  const m = HOST_PORT.exec(s.trim());
  if (!m) return null;
  const port = Number(m[3]);
  return port <= 65535 ? { host: (m[1] ?? m[2]) as string, port } : null;
}

/** An address to listen on: port 0 (any free port) is allowed. */
export function parseListen(s: string): { host: string; port: number } {
  const a = split(s);
  if (!a) throw new Error(`not a host:port address: "${s}"`);
  return a;
}

/** The address of a peer: port 1..65535. */
export function parsePeer(s: string): { host: string; port: number } {
  const a = split(s);
  if (!a || a.port === 0) throw new Error(`not a host:port address: "${s}"`);
  return a;
}

/** Config-schema types for both. */
export const listenAddress = z.string().refine((s) => split(s) !== null, 'expected host:port');
export const peerAddress = z.string().refine((s) => (split(s)?.port ?? 0) > 0, 'expected host:port');
