import { once } from 'node:events';
import { type AddressInfo, connect, createServer, type Socket } from 'node:net';
import { Duplex } from 'node:stream';
import type { CfConnect } from '@dsm/client/workers';
import { describe, expect, it, vi } from 'vitest';
import { IsolateKvStore } from './isolate-kv.ts';
import { clusterKeyFromEnv, configFromEnv, workerFromEnv } from './worker-config.ts';

// The `cloudflare:sockets` module exists only in workerd; the adapter is tested here over a
// Node socket with the same shape (the Miniflare tests run it for real).
vi.mock('cloudflare:sockets', () => ({
  connect: () => {
    throw new Error('not in workerd');
  },
}));

const { socketsTransport } = await import('@dsm/client/workers');

/** A `cloudflare:sockets` Socket look-alike over a Node socket; `opened` waits for `openEvent`. */
function cfSocketOver(s: Socket, openEvent: 'connect' | 'secureConnect' = 'connect'): ReturnType<CfConnect> {
  const web = Duplex.toWeb(s) as {
    readable: ReadableStream<Uint8Array>;
    writable: WritableStream<Uint8Array>;
  };
  return {
    readable: web.readable,
    writable: web.writable,
    opened: new Promise((resolve, reject) => s.once(openEvent, resolve).once('error', reject)),
    closed: new Promise((resolve) => s.once('close', () => resolve())),
    close: async () => {
      s.destroy();
    },
  };
}

/** cloudflare:sockets' connect over node:net. */
const nodeCfConnect: CfConnect = ({ hostname, port }) => cfSocketOver(connect(port, hostname));

describe('socketsTransport (the cloudflare:sockets Transport)', () => {
  it('writes, reads to the end, and reports the close', async () => {
    const server = createServer((c) => c.pipe(c)); // echo
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as AddressInfo).port;
    try {
      const t = socketsTransport(nodeCfConnect);
      const sock = await t.connect('127.0.0.1', port, { timeoutMs: 1000 });
      await sock.write(new TextEncoder().encode('hello '));
      await sock.write(new TextEncoder().encode('world'));
      let got = '';
      while (got.length < 11) {
        const c = await sock.read();
        if (!c) break;
        got += new TextDecoder().decode(c);
      }
      expect(got).toBe('hello world');
      expect(sock.closed).toBe(false);
      sock.close();
      expect(sock.closed).toBe(true);
      expect(await sock.read()).toBeNull();
      await expect(sock.write(new Uint8Array(1))).rejects.toMatchObject({ code: 'DSM_ERR_SOCKET' });
    } finally {
      server.close();
    }
  });

  it('fails to connect with DSM_ERR_CONNECT (refused, and timed out)', async () => {
    const server = createServer();
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as AddressInfo).port;
    server.close();
    await once(server, 'close');
    const t = socketsTransport(nodeCfConnect);
    await expect(t.connect('127.0.0.1', port, { timeoutMs: 1000 })).rejects.toMatchObject({
      code: 'DSM_ERR_CONNECT',
    });
    const never = socketsTransport(() => ({
      readable: new ReadableStream(),
      writable: new WritableStream(),
      opened: new Promise(() => {}),
      closed: new Promise(() => {}),
      close: async () => {},
    }));
    await expect(never.connect('192.0.2.1', 1, { timeoutMs: 50 })).rejects.toThrow(/timed out after 50 ms/);
  });
});

describe('the Worker transport with secureTransport "on" and a cluster key (DSM_CLUSTER_KEY)', () => {
  it('passes secureTransport "on" to connect() and talks TLS through it; the key comes from the binding', async () => {
    const { execFileSync } = await import('node:child_process');
    const { mkdtempSync, readFileSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const tls = await import('node:tls');
    const dir = mkdtempSync(join(tmpdir(), 'dsm-wtls-'));
    try {
      execFileSync(
        'openssl',
        ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=n'].concat([
          '-addext',
          'subjectAltName=IP:127.0.0.1',
          '-keyout',
          join(dir, 'k.pem'),
          '-out',
          join(dir, 'c.pem'),
        ]),
        { stdio: 'ignore' },
      );
      const ca = readFileSync(join(dir, 'c.pem'));
      // a TLS echo server stands in for a node listener with tls.certFile
      const server = tls.createServer({ cert: ca, key: readFileSync(join(dir, 'k.pem')) }, (c) => c.pipe(c));
      server.listen(0, '127.0.0.1');
      await once(server, 'listening');
      const port = (server.address() as AddressInfo).port;
      const modes: unknown[] = [];
      // cloudflare:sockets' shape over node:tls, TLS only when asked for
      const tlsCfConnect: CfConnect = ({ hostname, port: p }, options) => {
        modes.push(options?.secureTransport);
        const on = options?.secureTransport === 'on';
        const s = on ? tls.connect({ host: hostname, port: p, ca }) : connect(p, hostname);
        return cfSocketOver(s, on ? 'secureConnect' : 'connect');
      };
      const config = configFromEnv({
        DSM_GATEWAY: {
          auth: { mode: 'none', allowAnonymousUploads: true },
          cluster: { tls: 'on', keyId: 'k7' },
        },
      });
      const key = clusterKeyFromEnv(config, { DSM_CLUSTER_KEY: 'w'.repeat(40) });
      expect([key?.id, key?.secret.length]).toEqual(['k7', 40]);
      expect(clusterKeyFromEnv(config, {})).toBeUndefined();
      expect(() => clusterKeyFromEnv(config, { DSM_CLUSTER_KEY: 'short' })).toThrow(/at least 32/);
      const t = socketsTransport(tlsCfConnect, { secureTransport: config.cluster.tls });
      const sock = await t.connect('127.0.0.1', port, { timeoutMs: 2000 });
      await sock.write(new TextEncoder().encode('over tls'));
      expect(new TextDecoder().decode((await sock.read()) ?? new Uint8Array())).toBe('over tls');
      sock.close();
      expect(modes).toEqual(['on']);
      server.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('configFromEnv (Worker bindings)', () => {
  it('has the defaults without bindings, except that anonymous uploads must be asked for', () => {
    // a Worker is public: the embedded default (auth.mode none) is refused unless asked for
    expect(() => configFromEnv({})).toThrow(/config key "auth.mode"/);
    const c = configFromEnv({ DSM_GATEWAY: { auth: { allowAnonymousUploads: true } } });
    expect(c.trackers).toEqual(['127.0.0.1:21000']);
    expect(c.cache).toBe('memory:');
    expect(() =>
      configFromEnv({
        DSM_GATEWAY: { auth: { allowAnonymousUploads: true }, admin: { listen: '127.0.0.1:9' } },
      }),
    ).toThrow(/admin.listen/);
  });

  it('takes HS256 key sets and the admin token from secrets', () => {
    const c = configFromEnv({
      DSM_GATEWAY: { auth: { mode: 'jwt' } },
      DSM_AUTH_HS256_KEYS: JSON.stringify({ k1: 'a'.repeat(32), k2: 'b'.repeat(32) }),
      DSM_ADMIN_TOKEN: 't'.repeat(32),
    });
    expect(c.auth.hs256Keys).toEqual({ k1: 'a'.repeat(32), k2: 'b'.repeat(32) });
    expect(c.admin.token).toBe('t'.repeat(32));
    expect(() => configFromEnv({ DSM_GATEWAY: { auth: { mode: 'jwt' } }, DSM_AUTH_HS256_KEYS: '{' })).toThrow(
      /DSM_AUTH_HS256_KEYS is not JSON/,
    );
  });

  it('takes DSM_GATEWAY as a table or JSON, with the single-value bindings on top', () => {
    const table = configFromEnv({
      DSM_GATEWAY: { statCacheMs: 5, auth: { mode: 'jwt' } },
      DSM_TRACKERS: '10.0.0.1:21000, 10.0.0.2:21000',
      DSM_PUBLIC_URL: 'https://media.example.com',
      DSM_AUTH_HS256_SECRET: 'x'.repeat(32),
      DSM_SIGNING_KEYS: '{"k1":"0123456789abcdef0123"}',
    });
    expect(table).toMatchObject({
      statCacheMs: 5,
      trackers: ['10.0.0.1:21000', '10.0.0.2:21000'],
      publicUrl: 'https://media.example.com',
      auth: { mode: 'jwt', hs256Secret: 'x'.repeat(32) },
      downloads: { signingKeys: { k1: '0123456789abcdef0123' } },
    });
    expect(
      configFromEnv({ DSM_GATEWAY: '{"maxUploadBytes": 1000, "auth": {"allowAnonymousUploads": true}}' })
        .maxUploadBytes,
    ).toBe(1000);
  });

  it('names the bad key, and refuses state outside the isolate', () => {
    expect(() => configFromEnv({ DSM_GATEWAY: { statCacheMs: -1 } })).toThrow(/config key "statCacheMs"/);
    expect(() => configFromEnv({ DSM_GATEWAY: { nope: 1 } })).toThrow(/nope/);
    expect(() => configFromEnv({ DSM_GATEWAY: '{' })).toThrow(/DSM_GATEWAY is not JSON/);
    expect(() => configFromEnv({ DSM_SIGNING_KEYS: 'k1=abc' })).toThrow(/DSM_SIGNING_KEYS is not JSON/);
    expect(() => configFromEnv({ DSM_GATEWAY: { cache: 'redis://127.0.0.1:6379/0' } })).toThrow(
      /not available in the Worker/,
    );
  });
});

describe('workerFromEnv: where the Worker keeps its state (config `cache`)', () => {
  const anon = { auth: { allowAnonymousUploads: true } };
  // the shape of a Durable Object namespace binding (the real one runs in worker-do.test.ts)
  const ns = { idFromName: (n: string) => n, get: () => ({ fetch: async () => new Response() }) };

  it('takes the DSM_TUS Durable Object when it is bound and `cache` is unset, else isolate memory', () => {
    const bound = workerFromEnv({ DSM_GATEWAY: anon, DSM_TUS: ns });
    expect(bound.config.cache).toBe('durable-object:DSM_TUS');
    expect(bound.state).toMatchObject({ kind: 'durable-object', binding: 'DSM_TUS', namespace: ns });
    expect(bound.state.kind === 'durable-object' && bound.state.limits).toEqual({
      shards: 16,
      maxKeyBytes: 1024,
      maxValueBytes: 128 * 1024,
      maxKeysPerObject: 100_000,
      requestTimeoutMs: 5000,
    });
    expect(workerFromEnv({ DSM_GATEWAY: anon }).state).toEqual({ kind: 'memory' });
    // memory: asked for, even with the binding present
    expect(workerFromEnv({ DSM_GATEWAY: { ...anon, cache: 'memory:' }, DSM_TUS: ns }).state).toEqual({
      kind: 'memory',
    });
  });

  it('names another binding with durable-object:<NAME>, and refuses one that is not bound', () => {
    const env = {
      DSM_GATEWAY: { ...anon, cache: 'durable-object:STATE', durableObject: { shards: 4 } },
      STATE: ns,
    };
    const w = workerFromEnv(env as never);
    expect(w.state).toMatchObject({ kind: 'durable-object', binding: 'STATE', limits: { shards: 4 } });
    expect(() => workerFromEnv({ DSM_GATEWAY: { ...anon, cache: 'durable-object:NOPE' } })).toThrow(
      /config key "cache": "durable-object:NOPE" names no Durable Object binding/,
    );
  });

  it('names a bad bound of durableObject', () => {
    expect(() =>
      workerFromEnv({ DSM_GATEWAY: { ...anon, durableObject: { maxValueBytes: 10 } }, DSM_TUS: ns }),
    ).toThrow(/config key "durableObject.maxValueBytes"/);
    expect(() =>
      workerFromEnv({ DSM_GATEWAY: { ...anon, durableObject: { extra: 1 } }, DSM_TUS: ns }),
    ).toThrow(/durableObject/);
  });
});

describe('IsolateKvStore', () => {
  it('has Redis semantics: NX, TTL, compare-and-delete, expire, incrBy', async () => {
    const kv = new IsolateKvStore();
    expect(await kv.setIfAbsent('lock', 'a', 40)).toBe(true);
    expect(await kv.setIfAbsent('lock', 'b', 40)).toBe(false);
    expect(await kv.delIfValue('lock', 'b')).toBe(false);
    expect(await kv.get('lock')).toBe('a');
    await new Promise((r) => setTimeout(r, 60));
    expect(await kv.get('lock')).toBeNull();
    expect(await kv.setIfAbsent('lock', 'b', 1000)).toBe(true);
    expect(await kv.delIfValue('lock', 'b')).toBe(true);
    expect(await kv.expire('lock', 100)).toBe(false);
    await kv.set('k', 'v', 30);
    expect(await kv.expire('k', 1000)).toBe(true);
    await new Promise((r) => setTimeout(r, 50));
    expect(await kv.get('k')).toBe('v');
    expect(await kv.incrBy('n', 2)).toBe(2);
    expect(await kv.incrBy('n', 3)).toBe(5);
    await expect(kv.incrBy('k', 1)).rejects.toMatchObject({ code: 'DSM_ERR_BAD_INPUT' });
    await expect(kv.set('k', 'v', 0)).rejects.toMatchObject({ code: 'DSM_ERR_BAD_INPUT' });
    for (let i = 0; i < IsolateKvStore.SWEEP_EVERY; i++) await kv.set(`t${i}`, 'x', 1);
    await new Promise((r) => setTimeout(r, 5));
    expect(kv.size).toBe(2); // k, n
    await kv.close();
    await expect(kv.get('k')).rejects.toMatchObject({ code: 'DSM_ERR_CACHE_UNAVAILABLE' });
  });
});
