/**
 * The access log: one line per request at info (method, route, status, bytes, duration, request
 * id, client, the verified caller), 5xx at warn, nothing built when info is off.
 */
import { DsmClient } from '@dsm/client';
import { nodeTransport } from '@dsm/client/node';
import { createKvStore } from '@dsm/kv';
import { parseAddress } from '@dsm/packets';
import { describe, expect, it } from 'vitest';
import { createApp } from './app.ts';
import { parseGatewayConfig } from './config.ts';
import type { GatewayLog } from './core.ts';

type Line = { level: string; obj: Record<string, unknown>; msg?: string };

function capture(level: 'info' | 'warn'): GatewayLog & { lines: Line[]; isLevelEnabled(l: string): boolean } {
  const order = ['debug', 'info', 'warn', 'error'];
  const lines: Line[] = [];
  const at = (lv: string) => (obj: object, msg?: string) => {
    if (order.indexOf(lv) >= order.indexOf(level))
      lines.push({ level: lv, obj: obj as Record<string, unknown>, msg });
  };
  return {
    lines,
    isLevelEnabled: (l: string) => order.indexOf(l) >= order.indexOf(level),
    debug: at('debug'),
    info: at('info'),
    warn: at('warn'),
    error: at('error'),
  };
}

/** An app with no cluster behind it (trackers on a port where nothing listens). */
function appWith(log: GatewayLog) {
  const config = parseGatewayConfig({ trackers: ['127.0.0.1:1'], ioTimeoutMs: 1000 });
  const client = new DsmClient({ trackers: config.trackers.map(parseAddress), transport: nodeTransport });
  return createApp({ client, kv: createKvStore('memory:'), config, log }).app;
}

const requests = (lines: Line[]) => lines.filter((l) => l.msg === 'request');

describe('access log', () => {
  it('writes one info line per request with route, status, bytes, duration, id and client', async () => {
    const log = capture('info');
    const app = appWith(log);
    const r = await app.request('/healthz', { headers: { 'x-request-id': 'req-1' } });
    expect(r.status).toBe(200);
    const [line, ...more] = requests(log.lines);
    expect(more).toEqual([]);
    expect(line?.level).toBe('info');
    expect(line?.obj).toMatchObject({
      requestId: 'req-1',
      method: 'GET',
      route: '/healthz',
      path: '/healthz',
      status: 200,
      // c.json sets no Content-Length (the server counts it as it writes): not known up front
      bytes: r.headers.get('content-length') === null ? null : Number(r.headers.get('content-length')),
      client: 'unknown',
    });
    expect(line?.obj.ms).toBeTypeOf('number');
  });

  it('names the verified caller and logs a cluster failure at warn', async () => {
    const log = capture('info');
    const app = appWith(log);
    // mode none: the caller is the configured default identity; no cluster answers → 503
    const r = await app.request('/tus', {
      method: 'POST',
      headers: { 'tus-resumable': '1.0.0', 'upload-length': '10' },
    });
    expect(r.status).toBe(503);
    const line = requests(log.lines).at(-1);
    expect(line?.level).toBe('warn');
    expect(line?.obj).toMatchObject({
      method: 'POST',
      route: '/tus',
      status: 503,
      principal: 'tnvideo/tnv001',
    });
  });

  it('marks unmatched routes and cuts long paths', async () => {
    const log = capture('info');
    const app = appWith(log);
    const long = `/${'x'.repeat(1000)}`;
    expect((await app.request(long)).status).toBe(404);
    const line = requests(log.lines).at(-1);
    expect(line?.obj).toMatchObject({ route: 'unmatched', status: 404 });
    expect(String(line?.obj.path).length).toBeLessThanOrEqual(257);
  });

  it('writes nothing for a 2xx when the level is above info', async () => {
    const log = capture('warn');
    const app = appWith(log);
    expect((await app.request('/healthz')).status).toBe(200);
    expect(requests(log.lines)).toEqual([]);
  });
});
