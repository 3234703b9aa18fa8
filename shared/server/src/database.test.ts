import { type AddressInfo, connect, createServer, type Server, type Socket } from 'node:net';
import { createLogger, DsmError } from '@dsm/common';
import { MYSQL_URL, mariadbBackend } from '@dsm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDatabase } from './database.ts';

const log = createLogger('database-test');

/** A TCP port that forwards to MariaDB only while `up()`. */
class Gate {
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  #open = false;
  port = 0;
  constructor(target: { host: string; port: number }) {
    this.#server = createServer((c) => {
      if (!this.#open) return c.destroy();
      const u = connect(target.port, target.host);
      for (const s of [c, u]) {
        this.#sockets.add(s);
        s.on('error', () => {});
        s.on('close', () => this.#sockets.delete(s));
      }
      c.pipe(u).pipe(c);
    });
  }
  async listen(): Promise<void> {
    await new Promise<void>((r) => this.#server.listen(0, '127.0.0.1', r));
    this.port = (this.#server.address() as AddressInfo).port;
  }
  up(): void {
    this.#open = true;
  }
  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise((r) => this.#server.close(r));
  }
}

describe('openDatabase: one policy for a database that is down at start-up', () => {
  const backend = mariadbBackend({ redis: false });
  const target = new URL(MYSQL_URL);
  const gate = new Gate({ host: target.hostname, port: Number(target.port || 3306) });
  beforeAll(async () => {
    await backend.setup();
    await gate.listen();
  });
  afterAll(async () => {
    await gate.close();
    await backend.cleanup();
  });

  it('starts anyway, fails requests fast with DB_UNAVAILABLE, then migrates in the background once the database answers', async () => {
    const dbName = new URL(backend.database('outage')).pathname;
    const user = target.username || 'root';
    const url = `mysql://${user}${target.password ? `:${target.password}` : ''}@127.0.0.1:${gate.port}${dbName}?connectTimeoutMs=500`;
    const db = await openDatabase('tracker', url, { log, retryMs: 300 });
    try {
      expect(db.migrated).toBe(false);
      const t0 = Date.now();
      const e = await db.ready().catch((x) => x);
      expect(e).toBeInstanceOf(DsmError);
      expect([e.code, e.errno]).toEqual(['DSM_ERR_DB_UNAVAILABLE', 5]);
      // on demand, but not more than once per retry period: the next caller gets the answer at once
      const again = Date.now();
      await expect(db.ready()).rejects.toMatchObject({ code: 'DSM_ERR_DB_UNAVAILABLE' });
      expect(Date.now() - again).toBeLessThan(100);
      expect(Date.now() - t0).toBeLessThan(3000);
      gate.up();
      // no request: the background retry migrates
      const deadline = Date.now() + 5000;
      while (!db.migrated && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      expect(db.migrated).toBe(true);
      await db.ready();
      const rows = await db.db.selectFrom('t_router').select('group_name').execute();
      expect(rows).toEqual([]);
    } finally {
      await db.close();
    }
  });

  it('a bad URL stops the start-up', async () => {
    await expect(openDatabase('id', 'postgres://x/y', { log })).rejects.toThrow(/bad database URL/);
  });
});
