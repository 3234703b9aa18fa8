import { connect } from 'node:net';
import type { ByteSocket, ConnectOptions, Transport } from '@dsm/client';
import { NodeByteSocket } from '@dsm/client/node';
import { DsmError, ErrorCode } from '@dsm/common/errors';

/**
 * A Transport whose TCP connections are made from inside a lab namespace by
 * infra/ha/scripts/ns-tcp-proxy.mjs (listening on `socketPath`): the test process itself has
 * no route to 10.213.0.0/24. A refused/unreachable address is a CONNECT error, as with
 * nodeTransport.
 */
export function labTransport(socketPath: string): Transport {
  return {
    connect(host: string, port: number, opts: ConnectOptions): Promise<ByteSocket> {
      return new Promise((resolve, reject) => {
        const s = connect({ path: socketPath });
        let head = Buffer.alloc(0);
        let done = false;
        const fail = (why: string) => {
          if (done) return;
          done = true;
          clearTimeout(timer);
          s.destroy();
          reject(new DsmError(ErrorCode.CONNECT, `cannot connect to ${host}:${port}: ${why}`));
        };
        const timer = setTimeout(() => fail(`timed out after ${opts.timeoutMs} ms`), opts.timeoutMs + 200);
        s.once('connect', () => s.write(`${host} ${port} ${opts.timeoutMs}\n`));
        const onData = (c: Buffer) => {
          head = Buffer.concat([head, c]);
          if (head[0] === 1) {
            done = true;
            clearTimeout(timer);
            s.off('data', onData);
            s.off('end', onEnd);
            s.removeAllListeners('error');
            s.pause();
            resolve(new NodeByteSocket(s, head.subarray(1)));
          }
        };
        const onEnd = () => fail(head.subarray(1).toString() || 'closed by the lab proxy');
        s.on('data', onData);
        s.once('end', onEnd);
        s.once('close', onEnd);
        s.on('error', (e) => fail(`lab proxy: ${e.message}`));
      });
    },
  };
}
