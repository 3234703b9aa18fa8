/**
 * Node-protocol auth, allowFrom and TLS, as every node's listener enforces them (the listener
 * is created in one place, startNode, from these options).
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { type AddressInfo, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type ClusterKey, Connection, hmacSha256, Pool, RemoteError } from '@dsm/client';
import { createNodeTransport, nodeTransport } from '@dsm/client/node';
import { ConfigError, createLogger, DsmError } from '@dsm/common';
import {
  AUTH_CLIENT_LABEL,
  authTranscript,
  Command,
  decodeAuthChallengeReply,
  Errno,
  encodeAuthProve,
  encodeFrame,
  exactly,
} from '@dsm/packets';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { ProtocolServer } from './protocol-server.ts';
import { loadNodeSecurity, type NodeSecurity, nodeSecurityShape } from './security.ts';

const log = createLogger('auth-test');
const isDsmError = (e: unknown, code?: string): boolean =>
  e instanceof DsmError && (!code || e.code === code);
const dir = mkdtempSync(join(tmpdir(), 'dsm-auth-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const key = (id: string, fill: string): ClusterKey => ({
  id,
  secret: new TextEncoder().encode(fill.repeat(40)),
});
const k1 = key('k1', 'a');
const k2 = key('k2', 'b');
const schema = z.object(nodeSecurityShape);
const text = (k: ClusterKey) => new TextDecoder().decode(k.secret);

/** The security of a node from config keys, as a node loads it. */
function security(raw: unknown, host = '127.0.0.1'): NodeSecurity {
  return loadNodeSecurity({ ...schema.parse(raw), configDir: dir }, host);
}

const servers: ProtocolServer[] = [];
afterAll(() => Promise.all(servers.map((s) => s.close())));

async function serve(sec: NodeSecurity): Promise<number> {
  const s = new ProtocolServer({
    name: 'test',
    hostname: 'h',
    replyCommand: Command.STORAGE_REPLY,
    log,
    security: sec,
    handlers: {
      [Command.PING]: async (ctx) => ctx.reply(),
      [Command.STORAGE_SIZE]: async (ctx) => ctx.reply(new Uint8Array(8)),
      [Command.STORAGE_DELETE]: async (ctx) => ctx.reply(),
      [Command.STORAGE_DELETES]: async (ctx) => ctx.reply(new Uint8Array(10)),
      [Command.TRACKER_STATUS]: async (ctx) => ctx.reply(),
      [Command.TRACKER_ADDRS]: async (ctx) => ctx.reply(),
      [Command.TRACKER_LOCATE]: async (ctx) => ctx.reply(),
      [Command.STORAGE_UPLOAD]: async (ctx) => {
        for await (const _ of ctx.stream);
        await ctx.reply(new Uint8Array(0));
      },
    },
  });
  servers.push(s);
  return (await s.listen(0)).port;
}

async function connection(port: number, t = nodeTransport): Promise<Connection> {
  return new Connection(await t.connect('127.0.0.1', port, { timeoutMs: 2000 }), `127.0.0.1:${port}`, {
    ioTimeoutMs: 3000,
  });
}

const ask = (c: Connection, command: number, body = new Uint8Array(0)) =>
  c.request(command, body, Command.STORAGE_REPLY, { kind: 'buffered', min: 0, max: 64 });

async function refusal(p: Promise<unknown>): Promise<RemoteError> {
  const e = await p.then(
    () => null,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(RemoteError);
  return e as RemoteError;
}

describe('node-protocol auth (auth.required)', () => {
  let port = 0;
  beforeAll(async () => {
    port = await serve(
      security({
        auth: {
          required: true,
          keys: [
            { id: 'k2', secret: text(k2) },
            { id: 'k1', secret: text(k1) },
          ],
        },
      }),
    );
  });

  it('refuses writes, deletes, the delete log, layout reads and the routing address list without auth (errno UNAUTHORIZED, connection closed); PING and reads stay open', async () => {
    for (const [command, body] of [
      [Command.STORAGE_DELETE, new Uint8Array(400)],
      // the delete log names other tenants' files
      [Command.STORAGE_DELETES, new Uint8Array(8)],
      [Command.TRACKER_STATUS, new Uint8Array(0)],
      // 12 assigns a group to a user it has not seen (a t_router row): not a read
      [Command.TRACKER_ADDRS, new Uint8Array(400)],
    ] as const) {
      const c = await connection(port);
      const e = await refusal(ask(c, command, body));
      expect(e.errno).toBe(Errno.UNAUTHORIZED);
      expect(e.code).toBe('DSM_ERR_UNAUTHORIZED');
      expect(e.message).toBe(
        `[h] Authentication Required: command ${command} needs a connection authenticated with a cluster key`,
      );
      expect(c.usable).toBe(false);
    }
    // a streamed upload is refused from its header, before any body byte is read
    const c = await connection(port);
    async function* body() {
      yield new Uint8Array(1000);
    }
    const up = await refusal(
      c.requestStreamed(
        Command.STORAGE_UPLOAD,
        new Uint8Array(408),
        1000,
        body(),
        Command.STORAGE_REPLY,
        exactly(0),
      ),
    );
    expect(up.errno).toBe(Errno.UNAUTHORIZED);
    const open = await connection(port);
    await ask(open, Command.PING);
    expect((await ask(open, Command.STORAGE_SIZE, new Uint8Array(400))).length).toBe(8);
    open.close();
  });

  it('key rotation: with keys [k2, k1] both are accepted, mutually proven, and writes go through', async () => {
    for (const k of [k1, k2]) {
      const c = await connection(port);
      await c.authenticate(k);
      await ask(c, Command.STORAGE_DELETE, new Uint8Array(400));
      await ask(c, Command.TRACKER_STATUS);
      c.close();
    }
    // and a pool authenticates each new connection
    const pool = new Pool({ transport: nodeTransport, auth: k1 });
    await pool.use({ host: '127.0.0.1', port }, (c) => ask(c, Command.STORAGE_DELETE, new Uint8Array(400)));
    await pool.close();
  });

  it('then a node with only [k2] refuses k1; a wrong secret and an unknown key id are refused alike', async () => {
    const only2 = await serve(security({ auth: { required: true, keys: [{ id: 'k2', secret: text(k2) }] } }));
    for (const k of [k1, key('k2', 'c'), key('k9', 'b')]) {
      const c = await connection(only2);
      const e = await refusal(c.authenticate(k));
      expect([e.errno, e.message]).toEqual([Errno.UNAUTHORIZED, '[h] Authentication Failed']);
      expect(c.usable).toBe(false);
    }
    const pool = new Pool({ transport: nodeTransport, auth: k1 });
    const e = await pool.use({ host: '127.0.0.1', port: only2 }, (c) => ask(c, Command.PING)).catch((x) => x);
    expect(isDsmError(e, 'DSM_ERR_UNAUTHORIZED')).toBe(true);
    await pool.close();
    const c = await connection(only2);
    await c.authenticate(k2);
    await ask(c, Command.STORAGE_DELETE, new Uint8Array(400));
    c.close();
  });

  it('a proof taken from another connection is refused (each connection has its own server nonce)', async () => {
    const a = await connection(port);
    const nonceA = decodeAuthChallengeReply(
      await a.request(Command.AUTH_CHALLENGE, new Uint8Array(0), Command.STORAGE_REPLY, exactly(32)),
    );
    const clientNonce = new Uint8Array(32).fill(7);
    const proofA = await hmacSha256(k1, authTranscript(AUTH_CLIENT_LABEL, nonceA, clientNonce, 'k1'));
    const prove = encodeAuthProve({ keyId: 'k1', clientNonce, proof: proofA });
    // the eavesdropped proof, replayed on a second connection after its own challenge
    const b = await connection(port);
    await b.request(Command.AUTH_CHALLENGE, new Uint8Array(0), Command.STORAGE_REPLY, exactly(32));
    const e = await refusal(b.request(Command.AUTH_PROVE, prove, Command.STORAGE_REPLY, exactly(32)));
    expect([e.errno, e.message]).toEqual([Errno.UNAUTHORIZED, '[h] Authentication Failed']);
    // and without any challenge
    const c = await connection(port);
    const e2 = await refusal(c.request(Command.AUTH_PROVE, prove, Command.STORAGE_REPLY, exactly(32)));
    expect(e2.message).toBe('[h] Authentication Failed: No Challenge');
    // on its own connection it was good
    await a.request(Command.AUTH_PROVE, prove, Command.STORAGE_REPLY, exactly(32));
    await ask(a, Command.STORAGE_DELETE, new Uint8Array(400));
    a.close();
  });

  it('auth.reads: reads need auth too', async () => {
    const p = await serve(
      security({ auth: { required: true, reads: true, keys: [{ id: 'k1', secret: text(k1) }] } }),
    );
    const c = await connection(p);
    const e = await refusal(ask(c, Command.STORAGE_SIZE, new Uint8Array(400)));
    expect(e.errno).toBe(Errno.UNAUTHORIZED);
    const ok = await connection(p);
    await ask(ok, Command.PING);
    await ok.authenticate(k1);
    expect((await ask(ok, Command.STORAGE_SIZE, new Uint8Array(400))).length).toBe(8);
    ok.close();
  });

  it('a client refuses a server that cannot prove the key back', async () => {
    // a server that does not know the key: a fresh nonce, then a proof of random bytes
    const fake = createServer((s) => {
      s.on('error', () => {});
      let n = 0;
      s.on('data', () => {
        n++;
        s.write(encodeFrame(Command.STORAGE_REPLY, randomBytes(32)));
        if (n === 2) s.end();
      });
    });
    await new Promise<void>((r) => fake.listen(0, '127.0.0.1', r));
    try {
      const c = await connection((fake.address() as AddressInfo).port);
      const e = await c.authenticate(k1).catch((x) => x);
      expect(isDsmError(e, 'DSM_ERR_UNAUTHORIZED')).toBe(true);
      expect(e.message).toMatch(/could not prove that it holds cluster key "k1"/);
      expect(c.usable).toBe(false);
    } finally {
      fake.close();
    }
  });
});

describe('allowFrom and start-up rules', () => {
  it('allowFrom: a listener whose list does not contain 127.0.0.1 refuses it (PING aside, for keepalived)', async () => {
    const p = await serve(security({ allowFrom: ['10.0.0.0/8', '192.0.2.7'] }));
    for (const [command, body] of [
      [Command.STORAGE_SIZE, new Uint8Array(400)],
      [Command.STORAGE_DELETE, new Uint8Array(400)],
      [Command.AUTH_CHALLENGE, new Uint8Array(0)],
    ] as const) {
      const c = await connection(p);
      const e = await refusal(ask(c, command, body));
      expect([e.errno, e.message]).toEqual([Errno.UNAUTHORIZED, '[h] Address Not Allowed: 127.0.0.1']);
    }
    const ping = await connection(p);
    await ask(ping, Command.PING);
    ping.close();
    const ok = await serve(security({ allowFrom: ['127.0.0.0/8'] }));
    const c2 = await connection(ok);
    await ask(c2, Command.PING);
    c2.close();
  });

  it('a non-loopback listen address without auth is refused unless auth.allowUnauthenticated', () => {
    for (const host of ['0.0.0.0', '::', '10.1.2.3']) {
      expect(() => security({}, host)).toThrow(ConfigError);
      expect(() => security({}, host)).toThrow(
        /config key "auth.required": the node listens on .* not loopback/,
      );
      expect(security({ auth: { allowUnauthenticated: true } }, host).required).toBe(false);
    }
    expect(security({}, '127.0.0.1').required).toBe(false);
    expect(security({}, '::1').required).toBe(false);
    expect(() => security({ auth: { required: true } }, '0.0.0.0')).toThrow(
      /"auth.keys": auth.required is true but no key/,
    );
    expect(() => schema.parse({ auth: { keys: [{ id: 'k', secret: 'short' }] } })).toThrow(
      /at least 32 bytes/,
    );
    const file = join(dir, 'short.key');
    writeFileSync(file, 'short\n');
    expect(() => security({ auth: { keys: [{ id: 'k', secretFile: file }] } })).toThrow(
      /"auth.keys.0.secretFile": the secret in .* is shorter than 32 bytes/,
    );
    const good = join(dir, 'cluster.key');
    writeFileSync(good, `${'s'.repeat(32)}\n`);
    const s = security(
      { auth: { required: true, keys: [{ id: 'main', secretFile: 'cluster.key' }] } },
      '0.0.0.0',
    );
    expect(s.ownKey?.id).toBe('main');
    expect(s.ownKey?.secret.length).toBe(32); // the trailing newline is not part of it
  });
});

describe('TLS', () => {
  it('a TLS listener with auth: a real round trip through node:tls (self-signed certificate from openssl)', async () => {
    const cert = join(dir, 'node.crt');
    const keyFile = join(dir, 'node.key');
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'rsa:2048',
        '-nodes',
        '-days',
        '1',
        '-subj',
        '/CN=dsm-test',
        '-addext',
        'subjectAltName=IP:127.0.0.1,DNS:node.dsm.test',
        '-keyout',
        keyFile,
        '-out',
        cert,
      ],
      { stdio: 'ignore' },
    );
    const p = await serve(
      security({
        auth: { required: true, keys: [{ id: 'k1', secret: text(k1) }] },
        tls: { certFile: cert, keyFile },
      }),
    );
    const tls = createNodeTransport({ tls: { ca: readFileSync(cert, 'utf8') } });
    const pool = new Pool({ transport: tls, auth: k1 });
    await pool.use({ host: '127.0.0.1', port: p }, async (c) => {
      await ask(c, Command.STORAGE_DELETE, new Uint8Array(400));
      expect((await ask(c, Command.STORAGE_SIZE, new Uint8Array(400))).length).toBe(8);
    });
    await pool.close();
    // by name too
    const byName = createNodeTransport({ tls: { ca: readFileSync(cert), servername: 'node.dsm.test' } });
    const c = await connection(p, byName);
    await c.authenticate(k1);
    c.close();
    // a plain-TCP client gets nothing it can read, and a client that does not trust the cert fails
    const plain = await connection(p);
    const e = await ask(plain, Command.PING).catch((x) => x);
    expect(isDsmError(e)).toBe(true);
    const untrusting = await createNodeTransport({ tls: {} })
      .connect('127.0.0.1', p, { timeoutMs: 2000 })
      .catch((x) => x);
    expect(isDsmError(untrusting, 'DSM_ERR_CONNECT')).toBe(true);
    expect(String(untrusting.message)).toMatch(/self[- ]signed|certificate/i);
  });
});
