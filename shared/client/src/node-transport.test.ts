import { createServer, type Server } from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import { NodeByteSocket, nodeTransport } from './node-transport.ts';

const servers: Server[] = [];
afterAll(() => {
  for (const s of servers) s.close();
});

/** A server that writes `bytes` to each connection as fast as the client takes them. */
async function flooding(bytes: number): Promise<number> {
  const server = createServer((c) => {
    const block = Buffer.alloc(64 * 1024, 7);
    let left = bytes;
    const pump = () => {
      while (left > 0) {
        left -= block.length;
        if (!c.write(block)) {
          c.once('drain', pump);
          return;
        }
      }
      c.end();
    };
    pump();
    c.on('error', () => {});
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return (server.address() as { port: number }).port;
}

describe('NodeByteSocket (the protocol client over a net.Socket)', () => {
  it('holds at most a few chunks for a reader that does not read, then hands every byte out in order', async () => {
    const total = 32 * 1024 * 1024;
    const port = await flooding(total);
    const sock = await nodeTransport.connect('127.0.0.1', port, { timeoutMs: 2000 });
    // the server writes 32 MiB; nothing is read for a while
    await new Promise((r) => setTimeout(r, 300));
    expect(sock).toBeInstanceOf(NodeByteSocket);
    // paused after 4 reads of at most 64 KiB (one more may be in flight): 320 KiB at most, not
    // the 1 MiB that 16 chunks held per storage connection of a gateway with slow clients
    const held = (sock as NodeByteSocket).bytesRead;
    expect(held).toBeGreaterThan(0);
    expect(held).toBeLessThanOrEqual(5 * 64 * 1024);
    let got = 0;
    for (let c = await sock.read(); c; c = await sock.read()) {
      for (const b of c) if (b !== 7) throw new Error('wrong byte');
      got += c.length;
    }
    expect(got).toBe(total);
    sock.close();
  });
});
