import { createLogger, DsmError, ErrorCode, type Logger } from '@dsm/common';
import { type CreateDbOptions, createDb, isDbUnavailable, redact } from '@dsm/db';
import { Command, decodeIdRequest, Errno, encodeI64Body, formatAddress, ProtocolError } from '@dsm/packets';
import { ProtocolServer, type RunningNode } from '@dsm/server';
import { type IdConfig, parseListen, resolveDatabaseUrl } from './config.ts';
import { DbSegmentStore, IdAllocator } from './id-allocator.ts';

export interface StartIdServerOptions {
  log?: Logger;
  /** Passed to createDb (MySQL pool size, connect timeout). */
  db?: CreateDbOptions;
  /** SQLite: how long a reservation keeps retrying while the database is locked (default 5000 ms). */
  busyWaitMs?: number;
}

export interface IdServer extends RunningNode {
  ready: { role: 'id'; listen: string };
  host: string;
  port: number;
  allocator: IdAllocator;
  server: ProtocolServer;
  /** Stops the server (running requests may finish), then closes the database. */
  close(): Promise<void>;
}

/**
 * Starts an id server: PING (1) and ID_GET (40), replies with command ID_REPLY (101).
 * `config.configDir` (from loadConfig) anchors a relative SQLite path; default: the current
 * directory. A database that is down at start-up is not fatal: requests fail with errno
 * DB_UNAVAILABLE until it is back.
 */
export async function startIdServer(
  config: IdConfig & { configDir?: string },
  opts: StartIdServerOptions = {},
): Promise<IdServer> {
  const log = opts.log ?? createLogger('id');
  const { host, port } = parseListen(config.listen);
  const url = resolveDatabaseUrl(config.database, config.configDir ?? process.cwd());
  const handle = createDb(url, opts.db);
  const allocator = new IdAllocator(new DbSegmentStore(handle, { busyWaitMs: opts.busyWaitMs }), {
    step: config.step,
    log,
  });

  try {
    await allocator.prepare();
  } catch (e) {
    if (!isDbUnavailable(e)) {
      await handle.close();
      throw e;
    }
    log.warn({ err: e, database: redact(url) }, 'database unavailable at start-up; requests will retry it');
  }

  const server = new ProtocolServer({
    name: 'id',
    hostname: config.hostname,
    replyCommand: Command.ID_REPLY,
    log,
    handlers: {
      [Command.PING]: (ctx) => ctx.reply(),
      [Command.ID_GET]: async (ctx) => {
        const key = decodeIdRequest(ctx.body);
        const length = ctx.body.length - 1;
        if (length > config.maxKeyLength) {
          throw new ProtocolError(
            `Invalid ID Key Length: ${length} > ${config.maxKeyLength}`,
            Errno.BAD_FIELD,
          );
        }
        await ctx.reply(encodeI64Body(await allocator.next(key)));
      },
    },
  });

  let actualPort: number;
  try {
    actualPort = (await server.listen(port, host)).port;
  } catch (e) {
    await handle.close();
    throw new DsmError(
      ErrorCode.CONFIG,
      `cannot listen on ${config.listen}: ${(e as Error).message}`,
      undefined,
      {
        cause: e,
      },
    );
  }
  const listen = formatAddress({ host, port: actualPort });
  log.info({ listen, database: redact(url), step: config.step }, 'id server ready');

  let closing: Promise<void> | undefined;
  return {
    ready: { role: 'id', listen },
    host,
    port: actualPort,
    allocator,
    server,
    close: () => {
      closing ??= (async () => {
        try {
          await server.close();
        } finally {
          await handle.close();
        }
      })();
      return closing;
    },
  };
}
