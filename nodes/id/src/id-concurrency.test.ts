/**
 * Two id servers on ONE database under thousands of concurrent requests, one of them restarted
 * (closed, then a new instance on the same port and database) in the middle. No id may be
 * handed out twice, and each connection sees its ids in increasing order.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { Connection } from '@dsm/client';
import { nodeTransport } from '@dsm/client/node';
import { createDb } from '@dsm/db';
import { Command, decodeI64Body, encodeIdRequest, exactly } from '@dsm/packets';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { IdServer } from './id-server.ts';
import { BACKENDS, ServerSet, testConfig } from './test-support.ts';

const KEYS = ['race/a', 'race/b', 'race/c'];
const REQUESTS_PER_SERVER = 3000;
const CONNECTIONS_PER_SERVER = 32;
/** Small segments: many database reservations, so the two servers really compete. */
const STEP = 10;

interface Slot {
  name: string;
  current: { server: IdServer; gen: number } | null;
  done: number;
}

interface Got {
  slot: string;
  gen: number;
  stream: number;
  key: string;
  id: number;
}

describe.each(BACKENDS)('two id servers on one %s database', (_name, makeBackend) => {
  const backend = makeBackend();
  const servers = new ServerSet();

  beforeAll(() => backend.setup());
  afterAll(async () => {
    await servers.stopAll();
    await backend.cleanup();
  });

  it(`${2 * REQUESTS_PER_SERVER} concurrent requests, one server restarted midway: all ids distinct`, async () => {
    const url = backend.database('race');
    const config = testConfig(url, { step: STEP });
    const slots: Slot[] = [];
    for (const name of ['A', 'B']) {
      slots.push({ name, current: { server: await servers.start(config), gen: 1 }, done: 0 });
    }
    const [slotA] = slots as [Slot, Slot];
    const portA = slotA.current!.server.port;

    const got: Got[] = [];
    let streams = 0;
    let failures = 0;
    let restart: Promise<void> | null = null;

    const restartA = async () => {
      const old = slotA.current!;
      slotA.current = null;
      await servers.stop(old.server);
      const server = await servers.start({ ...config, listen: `127.0.0.1:${portA}` });
      slotA.current = { server, gen: old.gen + 1 };
    };

    const worker = async (slot: Slot, w: number) => {
      let conn: Connection | null = null;
      let stream = 0;
      let gen = 0;
      let n = w;
      while (slot.done < REQUESTS_PER_SERVER) {
        const inst = slot.current;
        if (!conn?.usable) {
          conn?.destroy();
          conn = null;
          if (!inst) {
            await sleep(2);
            continue;
          }
          try {
            const sock = await nodeTransport.connect('127.0.0.1', inst.server.port, { timeoutMs: 2000 });
            conn = new Connection(sock, `127.0.0.1:${inst.server.port}`, { ioTimeoutMs: 10_000 });
            stream = ++streams;
            gen = inst.gen;
          } catch {
            await sleep(2);
            continue;
          }
        }
        const key = KEYS[n++ % KEYS.length] as string;
        try {
          const body = await conn.request(Command.ID_GET, encodeIdRequest(key), Command.ID_REPLY, exactly(8));
          got.push({ slot: slot.name, gen, stream, key, id: decodeI64Body(body) });
          slot.done++;
        } catch {
          // The server went away under this connection (restart): reconnect and go on.
          failures++;
          conn.destroy();
          conn = null;
        }
        if (slot === slotA && !restart && slot.done >= REQUESTS_PER_SERVER / 2) restart = restartA();
      }
      conn?.close();
    };

    const t0 = Date.now();
    await Promise.all(
      slots.flatMap((slot) => Array.from({ length: CONNECTIONS_PER_SERVER }, (_, w) => worker(slot, w))),
    );
    await restart;
    const elapsed = Date.now() - t0;

    expect(restart).not.toBeNull();
    expect(slotA.current?.gen).toBe(2);
    for (const slot of slots) expect(slot.done).toBeGreaterThanOrEqual(REQUESTS_PER_SERVER);

    // 1. No id is handed out twice for a key, across both servers and the restart.
    for (const key of KEYS) {
      const ids = got.filter((g) => g.key === key).map((g) => g.id);
      expect(new Set(ids).size, key).toBe(ids.length);
    }

    // 2. Each connection (bound to one server instance) sees strictly increasing ids per key.
    const byStream = new Map<string, number[]>();
    for (const g of got) {
      const k = `${g.stream}/${g.key}`;
      const list = byStream.get(k) ?? [];
      list.push(g.id);
      byStream.set(k, list);
    }
    for (const [k, ids] of byStream) {
      for (let i = 1; i < ids.length; i++) {
        if (!((ids[i] as number) > (ids[i - 1] as number))) {
          throw new Error(`stream ${k}: id ${ids[i]} after ${ids[i - 1]}`);
        }
      }
    }

    // 3. The restarted instance only hands out ids above everything its predecessor did.
    const gens = new Set(got.filter((g) => g.slot === 'A').map((g) => g.gen));
    expect([...gens].sort()).toEqual([1, 2]);
    for (const key of KEYS) {
      const a = got.filter((g) => g.slot === 'A' && g.key === key);
      const before = Math.max(...a.filter((g) => g.gen === 1).map((g) => g.id));
      const after = Math.min(...a.filter((g) => g.gen === 2).map((g) => g.id));
      expect(after, key).toBeGreaterThan(before);
    }

    // 4. Every id lies in a reserved segment: below the counter left in t_id_gen.
    const check = createDb(url);
    try {
      const rows = await check.db.selectFrom('t_id_gen').select(['id', 'id_value']).execute();
      for (const key of KEYS) {
        const counter = Number(rows.find((r) => r.id === key)?.id_value);
        expect(counter % STEP, key).toBe(0);
        const ids = got.filter((g) => g.key === key).map((g) => g.id);
        expect(Math.max(...ids), key).toBeLessThan(counter);
        expect(Math.min(...ids), key).toBeGreaterThanOrEqual(0);
      }
    } finally {
      await check.close();
    }

    // Not a strict limit, just to notice a regression (e.g. a synchronous lock wait).
    expect(elapsed).toBeLessThan(20_000);
    expect(got.length).toBeGreaterThanOrEqual(2 * REQUESTS_PER_SERVER);
    expect(failures).toBeLessThan(10 * CONNECTIONS_PER_SERVER);
  });
});
