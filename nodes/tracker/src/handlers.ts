import { DsmError, ErrorCode } from '@dsm/common';
import {
  Command,
  decodeAddrsRequest,
  decodeBeat,
  decodeBeatExt,
  decodeJoin,
  decodeJoinExt,
  decodeLocateRequest,
  Errno,
  encodeAddrsReply,
  encodeClusterStatus,
  encodeText,
} from '@dsm/packets';
import type { Handler, RequestContext } from '@dsm/server';
import type { JoinAccess } from './access.ts';
import { APP_ID_RE, type TrackerConfig } from './config.ts';
import { connKey } from './conn-key.ts';
import type { GroupRouter } from './group-router.ts';
import { formatGroupList, type JoinInput, type Registry } from './registry.ts';

/** Seed joins carry the version string "1.0"; they count as protocol version 1. */
const SEED_PROTOCOL_VERSION = 1;

export interface TrackerParts {
  config: TrackerConfig;
  registry: Registry;
  router: GroupRouter;
  access: JoinAccess;
}

const keyOf = (ctx: RequestContext) => connKey(ctx.conn.remoteAddress, ctx.conn.remotePort);

/** The tracker's handler table: one entry per command it serves. */
export function trackerHandlers({ config, registry, router, access }: TrackerParts): Record<number, Handler> {
  const appIds = new Set(config.appIds);
  const allowedGroups = config.groups.length > 0 ? new Set(config.groups) : null;

  const register = (ctx: RequestContext, j: JoinInput): void => {
    if (allowedGroups && !allowedGroups.has(j.group)) {
      throw new DsmError(
        ErrorCode.UNAUTHORIZED,
        `Join Into Groups Fail, Group Not Served: ${j.group}`,
        Errno.UNAUTHORIZED,
      );
    }
    const rec = registry.join(j);
    void router.noteGroup(j.group);
    ctx.log.info(
      { group: rec.group, hostname: rec.hostname, addr: `${rec.host}:${rec.port}`, v: rec.protocolVersion },
      'storage joined',
    );
  };

  return {
    [Command.PING]: async (ctx) => ctx.reply(),

    [Command.TRACKER_JOIN]: async (ctx) => {
      access.checkSeedJoin();
      const j = decodeJoin(ctx.body);
      register(ctx, {
        ...j,
        host: ctx.conn.remoteAddress,
        protocolVersion: SEED_PROTOCOL_VERSION,
        conn: keyOf(ctx),
      });
      await ctx.reply();
    },

    [Command.TRACKER_JOIN_EXT]: async (ctx) => {
      const j = decodeJoinExt(ctx.body);
      access.checkSecret(j.secret);
      register(ctx, {
        group: j.group,
        hostname: j.hostname,
        version: j.version,
        port: j.port,
        startTime: j.startTime,
        joinTime: j.joinTime,
        protocolVersion: j.protocolVersion,
        totalBytes: j.totalBytes,
        freeBytes: j.freeBytes,
        load: j.load,
        host: ctx.conn.remoteAddress,
        conn: keyOf(ctx),
      });
      await ctx.reply();
    },

    [Command.TRACKER_BEAT]: async (ctx) => {
      const b = decodeBeat(ctx.body);
      registry.beat(b.group, b.hostname, ctx.conn.remoteAddress, keyOf(ctx));
      await ctx.reply();
    },

    [Command.TRACKER_BEAT_EXT]: async (ctx) => {
      const b = decodeBeatExt(ctx.body);
      registry.beatExt({
        group: b.group,
        host: ctx.conn.remoteAddress,
        port: b.port,
        totalBytes: b.totalBytes,
        freeBytes: b.freeBytes,
        load: b.load,
        pendingHeals: b.pendingHeals,
        writable: b.writable,
        conn: keyOf(ctx),
      });
      await ctx.reply();
    },

    [Command.TRACKER_ADDRS]: async (ctx) => {
      const { appId, userId } = decodeAddrsRequest(ctx.body);
      if (!APP_ID_RE.test(appId)) {
        throw new DsmError(ErrorCode.BAD_INPUT, `Invalid APPID: ${appId}`, Errno.BAD_FIELD);
      }
      if (!appIds.has(appId)) {
        throw new DsmError(ErrorCode.UNKNOWN_APP, `Unknownn APPID: ${appId}`, Errno.UNKNOWN_APP);
      }
      const group = await router.route(appId, userId);
      const picked = registry.pick(group, config.maxAddrs);
      if (picked.length === 0) {
        throw new DsmError(ErrorCode.NO_STORAGE, 'Get Storage Address Fail...', Errno.NO_STORAGE);
      }
      await ctx.reply(
        encodeAddrsReply({ group, addrs: picked.map((r) => ({ host: r.host, port: r.port })) }),
      );
    },

    // Reads (download, size, stat, delete) only look routes up: an unknown user is NOT_FOUND
    // with a storage's missing-file text, and no t_router row is created.
    [Command.TRACKER_LOCATE]: async (ctx) => {
      const { appId, userId, fileId } = decodeLocateRequest(ctx.body);
      if (!APP_ID_RE.test(appId)) {
        throw new DsmError(ErrorCode.BAD_INPUT, `Invalid APPID: ${appId}`, Errno.BAD_FIELD);
      }
      if (!appIds.has(appId)) {
        throw new DsmError(ErrorCode.UNKNOWN_APP, `Unknownn APPID: ${appId}`, Errno.UNKNOWN_APP);
      }
      const group = await router.lookup(appId, userId);
      if (group === null) {
        throw new DsmError(ErrorCode.NOT_FOUND, `Read Database Fail, Fileid: ${fileId}`, Errno.NOT_FOUND);
      }
      const picked = registry.pick(group, config.maxAddrs);
      if (picked.length === 0) {
        throw new DsmError(ErrorCode.NO_STORAGE, 'Get Storage Address Fail...', Errno.NO_STORAGE);
      }
      await ctx.reply(
        encodeAddrsReply({ group, addrs: picked.map((r) => ({ host: r.host, port: r.port })) }),
      );
    },

    [Command.TRACKER_GROUPS]: async (ctx) => {
      await ctx.reply(encodeText(formatGroupList(registry)));
    },

    [Command.TRACKER_STATUS]: async (ctx) => {
      const groups = registry.groupNames().map((name) => ({
        name,
        storages: registry.storages(name).map((r) => registry.toStatus(r)),
      }));
      await ctx.reply(encodeClusterStatus({ tracker: config.hostname, now: registry.now(), groups }));
    },
  };
}
