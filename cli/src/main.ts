import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync, statSync } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import type { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { parseArgs } from 'node:util';
import { DsmClient, decodePublicId, encodePublicId } from '@dsm/client';
import { createNodeTransport, nodeTransport } from '@dsm/client/node';
import {
  ConfigError,
  createLogger,
  ErrorCode,
  loadConfig,
  missingNodeFlags,
  nodeFlagsFor,
} from '@dsm/common';
import { toHex } from '@dsm/packets';
import { runNode } from '@dsm/server';
import { clientSettings, parseRange, secretFrom, UsageError } from './client-config.ts';
import { progressBar } from './progress.ts';
import { formatStatus, groupsJson, statusJson } from './status-table.ts';
import { runUp } from './up.ts';
import { versionText } from './version.ts';

const HELP = `dsm — distributed streaming-media store

Cluster
  dsm up [--dir D] [--trackers N] [--ids N] [--groups g1,g2] [--storages-per-group N]
         [--gateways N] [--gateway-workers N|auto] [--mysql URL] [--redis URL] [--fresh]
                                                   start a local cluster (Ctrl-C stops it);
                                                   each gateway runs one process per core
                                                   unless --gateway-workers says otherwise
  dsm tracker --config FILE                        run one tracker
  dsm storage --config FILE                        run one storage server
  dsm id --config FILE                             run one id server
  dsm gateway --config FILE                        run the HTTP gateway

Gateway credentials (keys from the gateway's config file, or --kid with --secret-file FILE,
$DSM_TOKEN_SECRET (token) / $DSM_SIGNING_SECRET (sign); --secret S works but shows in ps)
  dsm token --config FILE --app A --user U [--ttl SEC] [--kid K] [--secret-file F]
                                                   print an upload token (HS256 JWT)
  dsm sign URL|ID --config FILE [--ttl SEC] [--kid K] [--secret-file F] [--base URL]
                                                   print a signed, expiring download URL

Files (trackers from --trackers, $DSM_TRACKERS, .dsm/cluster/cluster.json, or 127.0.0.1:21000;
cluster key for nodes with auth.required: --key-file FILE or $DSM_KEY_FILE, else $DSM_CLUSTER_KEY,
never the secret itself on the command line; its id --key-id / $DSM_KEY_ID, default main;
TLS to the nodes: --tls-ca FILE or $DSM_TLS_CA)
  dsm upload FILE [--app A] [--user U] [--type MIME]    prints the public id on its last line
  dsm download ID [-o FILE] [--range A-B|A-|-N]         to FILE, or to stdout
  dsm stat ID                                           size, type, sha-256, mtime
  dsm rm ID                                             delete
  dsm status                                            groups, storages, state, free space
  dsm groups                                            the seed's group list text
  --json (upload, stat, status, groups, version): one JSON document on stdout, errors as
  {"error":{"code","message"}} on stderr. Exit codes: 0 ok, 1 error, 2 usage, 3 no such file.

  dsm --version | dsm version                           dsm and Node versions
`;

/** Exit code of a file id the cluster does not know (`dsm stat|download|rm`). */
const EXIT_NO_SUCH_FILE = 3;

/** A file verb's NOT_FOUND reply ("Read Database Fail, Fileid: …" from the nodes). */
class NoSuchFile extends Error {
  readonly code = ErrorCode.NOT_FOUND;
}

async function orNoSuchFile<T>(id: string, work: Promise<T>): Promise<T> {
  try {
    return await work;
  } catch (e) {
    if ((e as { code?: unknown }).code === ErrorCode.NOT_FOUND) throw new NoSuchFile(`no such file: ${id}`);
    throw e;
  }
}

/** Set from argv before parsing, so even a bad flag is reported as JSON under --json. */
let jsonOutput = false;

function printJson(doc: unknown): void {
  process.stdout.write(`${JSON.stringify(doc)}\n`);
}

async function client(flags: Parameters<typeof clientSettings>[0]) {
  const s = clientSettings(flags);
  const transport = s.tlsCa ? createNodeTransport({ tls: { ca: s.tlsCa } }) : nodeTransport;
  return {
    settings: s,
    dsm: new DsmClient({ trackers: s.trackers, transport, auth: s.auth, locateCacheMs: 0 }),
  };
}

function needId(positionals: string[]): string {
  const id = positionals[1];
  if (!id) throw new UsageError('missing file id');
  return id;
}

async function main(argv: string[]): Promise<number> {
  const cmd = argv[0];
  // `--range -N` (a suffix range) would read as an option to parseArgs: glue it to its flag.
  const args: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    const next = argv[i + 1];
    if (a === '--range' && next !== undefined && /^-\d+$/.test(next)) {
      args.push(`--range=${next}`);
      i++;
    } else args.push(a);
  }
  jsonOutput = argv.includes('--json');
  const { values: v, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      config: { type: 'string' },
      dir: { type: 'string' },
      trackers: { type: 'string' },
      ids: { type: 'string' },
      groups: { type: 'string' },
      'storages-per-group': { type: 'string' },
      gateways: { type: 'string' },
      'gateway-workers': { type: 'string' },
      mysql: { type: 'string' },
      redis: { type: 'string' },
      fresh: { type: 'boolean' },
      app: { type: 'string' },
      user: { type: 'string' },
      type: { type: 'string' },
      output: { type: 'string', short: 'o' },
      range: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
      ttl: { type: 'string' },
      secret: { type: 'string' },
      'secret-file': { type: 'string' },
      json: { type: 'boolean' },
      version: { type: 'boolean', short: 'V' },
      kid: { type: 'string' },
      base: { type: 'string' },
      'key-file': { type: 'string' },
      'key-id': { type: 'string' },
      'tls-ca': { type: 'string' },
    },
  });
  if (v.version || cmd === 'version') {
    process.stdout.write(versionText(v.json === true));
    return 0;
  }
  if (!cmd || v.help || cmd === 'help') {
    process.stdout.write(HELP);
    return cmd ? 0 : 2;
  }
  switch (cmd) {
    case 'up':
      return runUp(v);
    case 'tracker':
    case 'storage':
    case 'id':
    case 'gateway':
      return runNodeCommand(cmd, v.config);
    case 'token':
      return gatewayToken(v);
    case 'sign':
      return gatewaySign(positionals[1], v);
    case 'upload': {
      const file = positionals[1];
      if (!file) throw new UsageError('usage: dsm upload FILE [--app A] [--user U]');
      if (!existsSync(file)) throw new UsageError(`no such file: ${file}`);
      const st = statSync(file);
      if (!st.isFile()) throw new UsageError(`${file} is not a regular file`);
      const { settings, dsm } = await client(v);
      // --json: stdout carries the document only, and stderr no bar or message either
      const bar = v.json ? { update() {}, done() {} } : progressBar(st.size, 'upload');
      try {
        const r = await dsm.upload(
          {
            appId: settings.appId,
            userId: settings.userId,
            contentType: v.type ?? '',
            source: { size: st.size, open: () => createReadStream(file, { highWaterMark: 512 * 1024 }) },
          },
          (n) => bar.update(n),
        );
        bar.done();
        if (v.json) {
          printJson({
            id: r.publicId,
            group: r.group,
            size: r.stat.size,
            contentType: r.stat.contentType,
            sha256: toHex(r.stat.sha256),
          });
          return 0;
        }
        process.stderr.write(
          `uploaded ${r.stat.size} bytes to group ${r.group} (sha256 ${toHex(r.stat.sha256)}, ${r.stat.contentType})\n`,
        );
        process.stdout.write(`${r.publicId}\n`);
        return 0;
      } finally {
        await dsm.close();
      }
    }
    case 'download': {
      const id = needId(positionals);
      const ids = decodePublicId(id);
      const { dsm } = await client(v);
      try {
        const stat = await orNoSuchFile(id, dsm.stat(ids));
        const range = v.range ? await parseRange(v.range, async () => stat.size) : { offset: 0, length: 0 };
        const reply = await orNoSuchFile(id, dsm.download(ids, range.offset, range.length));
        const bar = progressBar(reply.length, 'download');
        const hash = createHash('sha256');
        let got = 0;
        const tmp = v.output ? `${v.output}.dsm-partial` : null;
        const sink = tmp ? createWriteStream(tmp) : process.stdout;
        async function* counted() {
          for await (const c of reply.stream) {
            hash.update(c);
            got += c.length;
            bar.update(got);
            yield c;
          }
        }
        try {
          await pipeline(counted(), sink as Writable);
        } catch (e) {
          if (tmp) await rm(tmp, { force: true });
          throw e;
        }
        bar.done();
        // A whole-file download is checked against the checksum recorded at upload.
        if (!v.range && hash.digest('hex') !== toHex(stat.sha256)) {
          if (tmp) await rm(tmp, { force: true });
          throw new Error('downloaded bytes do not match the recorded sha-256');
        }
        if (tmp && v.output) await rename(tmp, v.output);
        if (v.output) process.stderr.write(`wrote ${got} bytes to ${v.output}\n`);
        return 0;
      } finally {
        await dsm.close();
      }
    }
    case 'stat': {
      const id = needId(positionals);
      const ids = decodePublicId(id);
      const { dsm } = await client(v);
      try {
        const s = await orNoSuchFile(id, dsm.stat(ids));
        if (v.json) {
          printJson({
            id: encodePublicId(ids),
            appId: ids.appId,
            userId: ids.userId,
            fileId: ids.fileId,
            size: s.size,
            contentType: s.contentType,
            sha256: toHex(s.sha256),
            mtime: new Date(s.mtimeMs).toISOString(),
          });
          return 0;
        }
        const lines = [
          ['id', encodePublicId(ids)],
          ['app', ids.appId],
          ['user', ids.userId],
          ['file', ids.fileId],
          ['size', String(s.size)],
          ['type', s.contentType],
          ['sha256', toHex(s.sha256)],
          ['mtime', new Date(s.mtimeMs).toISOString()],
        ];
        process.stdout.write(`${lines.map(([k, val]) => `${(k as string).padEnd(7)}${val}`).join('\n')}\n`);
        return 0;
      } finally {
        await dsm.close();
      }
    }
    case 'rm': {
      const id = needId(positionals);
      const ids = decodePublicId(id);
      const { dsm } = await client(v);
      try {
        await orNoSuchFile(id, dsm.delete(ids));
        process.stderr.write(`deleted ${ids.fileId}\n`);
        return 0;
      } finally {
        await dsm.close();
      }
    }
    case 'status': {
      const { dsm } = await client(v);
      try {
        const s = await dsm.tracker.status();
        if (v.json) printJson(statusJson(s));
        else process.stdout.write(formatStatus(s));
        return 0;
      } finally {
        await dsm.close();
      }
    }
    case 'groups': {
      const { dsm } = await client(v);
      try {
        if (v.json) printJson(groupsJson(await dsm.tracker.status()));
        else process.stdout.write(`${await dsm.tracker.groupsText()}\n`);
        return 0;
      } finally {
        await dsm.close();
      }
    }
    default:
      throw new UsageError(`unknown command "${cmd}" (dsm help lists them)`);
  }
}

async function runNodeCommand(
  role: 'tracker' | 'storage' | 'id' | 'gateway',
  configFile: string | undefined,
): Promise<number> {
  const log = createLogger(role);
  const missing = missingNodeFlags(process.execArgv, process.env.NODE_OPTIONS ?? '', nodeFlagsFor(role));
  if (missing.length > 0) {
    // `dsm up`, the tests and the systemd units pass them; a node started by hand may not
    log.info(
      { missing },
      `node runs without ${missing.join(' ')}: more memory while streaming (docs/performance.md)`,
    );
  }
  // Each node package is loaded only when that node runs, so client verbs start fast.
  if (role === 'gateway') {
    const g = await import('@dsm/gateway');
    const n = await import('@dsm/gateway/node');
    const cfg = loadConfig(g.configSchema, configFile);
    // `workers` > 1 (default: one per core): a primary and N worker processes on one port
    if (n.isGatewayWorker() || n.gatewayWorkerCount(cfg) > 1) await n.runGatewayCluster(cfg, { log });
    else await runNode(log, () => n.startGateway(cfg, { log }));
  } else if (role === 'tracker') {
    const m = await import('@dsm/tracker-node');
    const cfg = loadConfig(m.configSchema, configFile);
    await runNode(log, () => m.startTracker(cfg, { log }));
  } else if (role === 'storage') {
    const m = await import('@dsm/storage-node');
    const cfg = loadConfig(m.configSchema, configFile);
    await runNode(log, () => m.startStorage(cfg, { log }));
  } else {
    const m = await import('@dsm/id-node');
    const cfg = loadConfig(m.configSchema, configFile);
    await runNode(log, () => m.startIdServer(cfg, { log }));
  }
  return -1; // keeps running
}

function ttlSeconds(text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  if (!/^\d+$/.test(text) || Number(text) <= 0) throw new UsageError(`bad --ttl "${text}": seconds, > 0`);
  return Number(text);
}

async function gatewayToken(v: {
  config?: string;
  app?: string;
  user?: string;
  ttl?: string;
  secret?: string;
  'secret-file'?: string;
  kid?: string;
}) {
  const given = secretFrom(v, 'DSM_TOKEN_SECRET', process.env, warn);
  const g = await import('@dsm/gateway');
  const cfg = v.config ? loadConfig(g.configSchema, v.config) : undefined;
  // the key set of the config (hs256Keys + the legacy hs256Secret as kid "default")
  const keys = cfg ? g.hs256KeySet(cfg.auth) : {};
  const ids = Object.keys(keys);
  const kid = v.kid ?? cfg?.auth.hs256KeyId ?? (ids.length === 1 ? ids[0] : undefined);
  const secret = given?.secret ?? (kid !== undefined && Object.hasOwn(keys, kid) ? keys[kid] : undefined);
  if (!secret) {
    throw new UsageError(
      ids.length > 1
        ? `several HS256 keys (${ids.join(', ')}): give --kid or auth.hs256KeyId`
        : 'no HS256 key: give --config (auth.hs256Keys), --secret-file FILE or $DSM_TOKEN_SECRET',
    );
  }
  const s = clientSettings(v);
  const token = await g.mintToken({
    secret,
    ...(kid !== undefined ? { kid } : {}),
    app: s.appId,
    sub: s.userId,
    ttlSec: ttlSeconds(v.ttl, 3600),
    issuer: cfg?.auth.issuer,
    audience: cfg?.auth.audience,
  });
  process.stdout.write(`${token}\n`);
  return 0;
}

async function gatewaySign(
  target: string | undefined,
  v: { config?: string; ttl?: string; secret?: string; 'secret-file'?: string; kid?: string; base?: string },
) {
  if (!target) throw new UsageError('usage: dsm sign URL|ID --config FILE [--ttl SEC]');
  const given = secretFrom(v, 'DSM_SIGNING_SECRET', process.env, warn);
  const g = await import('@dsm/gateway');
  const cfg = v.config ? loadConfig(g.configSchema, v.config) : undefined;
  const keys = cfg?.downloads.signingKeys ?? {};
  const kid = v.kid ?? cfg?.downloads.signingKeyId ?? Object.keys(keys)[0];
  const secret = given?.secret ?? (kid && Object.hasOwn(keys, kid) ? keys[kid] : undefined);
  if (!kid || !secret) {
    throw new UsageError(
      'no signing key: give --config (downloads.signingKeys), or --kid with --secret-file FILE or $DSM_SIGNING_SECRET',
    );
  }
  let url = target;
  if (!/^https?:\/\//.test(target) && !target.startsWith('/')) {
    // a bare public id
    const base = v.base ?? cfg?.publicUrl ?? `http://${cfg?.listen ?? '127.0.0.1:8080'}`;
    url = `${base.replace(/\/+$/, '')}/files/${target}`;
  }
  const maxLifetimeSec = cfg?.downloads.maxSignedUrlLifetimeSec ?? 7 * 24 * 3600;
  const expiresInSec = ttlSeconds(v.ttl, 3600);
  if (expiresInSec > maxLifetimeSec) {
    throw new UsageError(
      `--ttl ${expiresInSec} is longer than the gateway accepts (downloads.maxSignedUrlLifetimeSec ${maxLifetimeSec})`,
    );
  }
  process.stdout.write(`${await g.signUrl(url, { kid, secret, expiresInSec, maxLifetimeSec })}\n`);
  return 0;
}

function warn(message: string): void {
  process.stderr.write(`dsm: warning: ${message}\n`);
}

/**
 * One line on stderr, or under --json one document `{"error":{"code","message"}}` (code: a
 * DSM_ERR_… code, DSM_ERR_USAGE for a bad command line, DSM_ERR_GENERIC for anything else).
 */
function fail(e: unknown): number {
  const err = e as Error & { code?: unknown };
  const dsmCode = typeof err.code === 'string' && err.code.startsWith('DSM_ERR') ? err.code : undefined;
  const usage =
    err instanceof UsageError || (typeof err.code === 'string' && err.code.startsWith('ERR_PARSE_ARGS'));
  const exit = usage ? 2 : err instanceof NoSuchFile ? EXIT_NO_SUCH_FILE : 1;
  const message = `${err instanceof ConfigError ? 'config error: ' : ''}${err.message}`;
  if (jsonOutput) {
    const code = usage ? 'DSM_ERR_USAGE' : (dsmCode ?? 'DSM_ERR_GENERIC');
    process.stderr.write(`${JSON.stringify({ error: { code, message } })}\n`);
  } else {
    process.stderr.write(`dsm: ${message}${!usage && dsmCode ? ` (${dsmCode})` : ''}\n`);
  }
  return exit;
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code >= 0) process.exitCode = code;
  },
  (e: unknown) => {
    process.exitCode = fail(e);
  },
);
