/** Identifies a live connection: the peer's address and port (as ProtocolServer reports them). */
export function connKey(remoteAddress: string, remotePort: number): string {
  return `${normalizeAddress(remoteAddress)}|${remotePort}`;
}

function normalizeAddress(a: string): string {
  return a.startsWith('::ffff:') ? a.slice(7) : a;
}
