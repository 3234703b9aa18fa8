import { createLogger, DsmError, ErrorCode, type Logger, parseConfig, parseListen } from '@dsm/common';
import type { CreateDbOptions } from '@dsm/db';
import {
  Command,
  decodeIdRangeRequest,
  decodeIdRequest,
  Errno,
  encodeI64Body,
  encodeIdRangeReply,
  ProtocolError,
} from '@dsm/packets';
import { loadNodeSecurity, type ProtocolServer, type RunningNode, startNode } from '@dsm/server';
import { configSchema, type IdConfig, type IdConfigInput, keyMatcher, resolveDatabaseUrl } from './config.ts';
import { DbSegmentStore, IdAllocator } from './id-allocator.ts';

export interface StartIdServerOptions {
  log?: Logger;
  /** Passed to createDb (MySQL pool size, connect timeout). */
  db?: CreateDbOptions;
  /** SQLite: how long a reservation keeps retrying while the database is locked (default 5000 ms). */
  busyWaitMs?: number;
}

export interface IdServer extends RunningNode {
  ready: { role: 'id'; listen: string; admin?: string };
  host: string;
  port: number;
  allocator: IdAllocator;
  server: ProtocolServer;
  /** Stops the server (running requests may finish), then closes the database. */
  close(): Promise<void>;
}

/**
 * Starts an id server: PING (1), ID_GET (40) and ID_GET_RANGE (41, extension), replies with
 * command ID_REPLY (101). Only keys
 * matching `keyPatterns` are served (each new key is a row that lives for ever). A database that
 * is down at start-up is not fatal: requests fail with errno DB_UNAVAILABLE until it is back.
 */
export async function startIdServer(
  configIn: IdConfig | (IdConfigInput & { configDir?: string }),
  opts: StartIdServerOptions = {},
): Promise<IdServer> {
  const config: IdConfig = parseConfig(configSchema, configIn);
  const log = opts.log ?? createLogger('id');
  const served = keyMatcher(config.keyPatterns);
  const security = loadNodeSecurity(config, parseListen(config.listen).host);
  return startNode(log, async (kit) => {
    const url = resolveDatabaseUrl(config.database, config.configDir ?? '.');
    const db = await kit.openDatabase('id', url, { db: opts.db });
    const store = new DbSegmentStore(db, { busyWaitMs: opts.busyWaitMs, ready: db.ready });
    const allocator = new IdAllocator(store, { step: config.step, log });
    await allocator.prepare().catch(() => {}); // failures were logged; requests try again
    const { server, host, port, listen } = await kit.listen({
      name: 'id',
      listen: config.listen,
      hostname: config.hostname,
      replyCommand: Command.ID_REPLY,
      security,
      handlers: {
        [Command.PING]: (ctx) => ctx.reply(),
        [Command.ID_GET]: async (ctx) => {
          const key = decodeIdRequest(ctx.body);
          const length = ctx.body.length - 1;
          if (length > config.maxKeyLength) {
            const why = `Invalid ID Key Length: ${length} > ${config.maxKeyLength}`;
            throw new ProtocolError(why, Errno.BAD_FIELD);
          }
          if (!served(key))
            throw new DsmError(ErrorCode.BAD_INPUT, `ID Key Not Served: ${key}`, Errno.BAD_FIELD);
          await ctx.reply(encodeI64Body(await allocator.next(key)));
        },
        [Command.ID_GET_RANGE]: async (ctx) => {
          const { key, count } = decodeIdRangeRequest(ctx.body);
          const length = ctx.body.length - 5;
          if (length > config.maxKeyLength) {
            const why = `Invalid ID Key Length: ${length} > ${config.maxKeyLength}`;
            throw new ProtocolError(why, Errno.BAD_FIELD);
          }
          if (!served(key))
            throw new DsmError(ErrorCode.BAD_INPUT, `ID Key Not Served: ${key}`, Errno.BAD_FIELD);
          await ctx.reply(encodeIdRangeReply(await allocator.range(key, count)));
        },
      },
    });
    const m = kit.metrics;
    m.counter(
      'dsm_id_reservations_total',
      'Id segments and ranges reserved in the database',
      [],
      () => allocator.reservations,
    );
    m.counter(
      'dsm_id_reservation_failures_total',
      'Reservations that failed (database down or refusing)',
      [],
      () => allocator.failures,
    );
    m.gauge('dsm_id_segment_remaining', 'Ids left in the in-memory segment of each key', ['key'], (g) => {
      g.reset();
      for (const [key, left] of allocator.remaining()) g.set({ key }, left);
    });
    m.gauge('dsm_id_segment_size', 'Ids reserved per segment (step)', [], (g) => g.set(config.step));
    const admin = await kit.serveAdmin(config.admin, { allow: security.allow });
    log.info({ listen, step: config.step, admin: admin?.url }, 'id server ready');
    return {
      ready: { role: 'id' as const, listen, ...(admin ? { admin: admin.url } : {}) },
      host,
      port,
      allocator,
      server,
    };
  });
}
