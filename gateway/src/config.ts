import { z } from 'zod';

// Runtime-neutral on purpose: the Worker entry validates the same schema from its bindings.
// Loading a JSON file is the Node entry's job (node.ts, through loadConfig from @dsm/common).

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

/** `host:port` (port 0..65535; 0 = ephemeral, for tests). IPv6 hosts in brackets. */
export function parseListen(s: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(s.trim());
  const port = m ? Number(m[3]) : Number.NaN;
  if (!m || !(port >= 0 && port <= 65535)) throw new Error(`not a host:port address: "${s}"`);
  return { host: (m[1] ?? m[2]) as string, port };
}

const listenAddress = z.string().refine((s) => {
  try {
    parseListen(s);
    return true;
  } catch {
    return false;
  }
}, 'expected host:port');

const trackerAddress = z.string().refine((s) => {
  try {
    return parseListen(s).port > 0;
  } catch {
    return false;
  }
}, 'expected host:port');

const downloadPolicy = z.enum(['public', 'signed']);
export type DownloadPolicy = z.infer<typeof downloadPolicy>;

const authSchema = z
  .object({
    /** `none`: anyone may upload, as `defaultApp`/`defaultUser`. `jwt`: a bearer token is required. */
    mode: z.enum(['none', 'jwt']).default('none'),
    /** Shared secret for HS256 tokens (at least 32 bytes when used). */
    hs256Secret: z.string().default(''),
    /** A JWKS endpoint for asymmetric tokens (RS256, ES256, EdDSA …); optional. */
    jwksUrl: z.url().optional(),
    /** Expected `iss` / `aud` claims, when set. */
    issuer: z.string().min(1).optional(),
    audience: z.string().min(1).optional(),
    /** Tokens must carry `exp` (tokens that never expire are refused). */
    requireExp: z.boolean().default(true),
    clockToleranceSec: z.number().int().min(0).default(30),
    /** Identity of uploads in mode `none`. */
    defaultApp: z.string().min(1).max(15).default('tnvideo'),
    defaultUser: z.string().min(1).max(255).default('tnv001'),
  })
  .strict()
  .superRefine((a, ctx) => {
    if (a.mode !== 'jwt') return;
    if (!a.hs256Secret && !a.jwksUrl) {
      ctx.addIssue({
        code: 'custom',
        path: ['hs256Secret'],
        message: 'mode jwt needs hs256Secret or jwksUrl',
      });
    }
    if (a.hs256Secret && new TextEncoder().encode(a.hs256Secret).length < 32) {
      ctx.addIssue({ code: 'custom', path: ['hs256Secret'], message: 'must be at least 32 bytes' });
    }
  });

const downloadsSchema = z
  .object({
    /** Policy for apps not listed in `apps`. */
    default: downloadPolicy.default('public'),
    /** Per-app policy: `{ "tnvideo": "signed" }`. */
    apps: z.record(z.string(), downloadPolicy).default({}),
    /** HMAC keys for signed URLs by key id; several may be live while a secret rotates. */
    signingKeys: z.record(z.string().regex(/^[A-Za-z0-9._-]{1,64}$/), z.string().min(16)).default({}),
    /** Key id `dsm sign` uses (and the one assumed when a URL carries no `kid`). */
    signingKeyId: z.string().optional(),
  })
  .strict()
  .superRefine((d, ctx) => {
    const needsKeys = d.default === 'signed' || Object.values(d.apps).includes('signed');
    if (needsKeys && Object.keys(d.signingKeys).length === 0) {
      ctx.addIssue({
        code: 'custom',
        path: ['signingKeys'],
        message: 'signed downloads need at least one key',
      });
    }
    if (d.signingKeyId !== undefined && !(d.signingKeyId in d.signingKeys)) {
      ctx.addIssue({ code: 'custom', path: ['signingKeyId'], message: 'not a key of signingKeys' });
    }
  });

/**
 * Timeouts of the HTTP edge (Node entry). Inactivity timeouts count silence, not duration: an
 * upload from a slow phone that keeps sending, or a player that keeps reading, is never cut.
 */
const timeoutsSchema = z
  .object({
    /** The whole request head (line + headers) must arrive within this long (slowloris). */
    headersMs: z.number().int().min(100).default(20_000),
    /** A request body that sends nothing for this long is cut (socket closed, upload aborted). */
    bodyIdleMs: z.number().int().min(100).default(30_000),
    /**
     * A download whose client reads nothing for this long is cut; its storage connection goes
     * back to the pool (or is closed when mid-stream).
     */
    downloadIdleMs: z.number().int().min(100).default(60_000),
    /** A keep-alive connection idle between requests is closed after this long. */
    keepAliveMs: z.number().int().min(100).default(5_000),
    /**
     * A download whose client has not read for this long gives its storage connection back;
     * reading again continues it from the next byte on a new one (stalled players, paused videos
     * hold no storage connection).
     */
    upstreamReleaseMs: z.number().int().min(10).default(2_000),
    /** Longest wait for an upstream (tracker/storage) connection when all are busy. */
    upstreamQueueMs: z.number().int().min(10).default(5_000),
  })
  .strict();

/** Caps of the HTTP edge: past one, the request is refused before its bytes are held (413/429). */
const limitsSchema = z
  .object({
    /** Bytes of a request head (request line + headers); larger heads get 431. */
    maxHeaderBytes: z
      .number()
      .int()
      .min(1024)
      .max(1024 * 1024)
      .default(16 * 1024),
    /** Parts of a multipart/form-data body (fields and the file). */
    multipartParts: z.number().int().min(1).max(10_000).default(32),
    /** Form fields (parts that are not the file). */
    multipartFields: z.number().int().min(0).max(10_000).default(16),
    /** Total bytes of the form fields' names and values. */
    multipartFieldBytes: z
      .number()
      .int()
      .min(0)
      .max(16 * MiB)
      .default(64 * 1024),
    /** Bytes of one part's header block. */
    multipartPartHeaderBytes: z
      .number()
      .int()
      .min(256)
      .max(1024 * 1024)
      .default(4 * 1024),
    /** Uploads (REST and tus PATCH) streaming at once, gateway-wide; more get 429. */
    concurrentUploads: z.number().int().min(1).max(100_000).default(256),
    /** Open HTTP connections from one client address; more are answered 429 and closed. */
    connectionsPerClient: z.number().int().min(1).max(100_000).default(64),
    /**
     * Downloads one client address may stream at once (each holds a storage connection), so
     * slow readers from one address cannot take the upstream pool; more get 429.
     */
    downloadsPerClient: z.number().int().min(1).max(100_000).default(16),
    /** Requests waiting for an upstream connection, per storage; beyond it 503 at once. */
    upstreamQueue: z.number().int().min(0).max(100_000).default(64),
  })
  .strict();

/** Gateway configuration. Every key has a default, so an empty file works. */
export const configSchema = z
  .object({
    /** Where the HTTP server listens (Node entry). */
    listen: listenAddress.default('127.0.0.1:8080'),
    /** Base of the URLs put in replies (`url`, tus `Location`); default: the request's origin. */
    publicUrl: z.url().optional(),
    trackers: z.array(trackerAddress).min(1).default(['127.0.0.1:21000']),
    /** Upload state, locks and counters: `memory:` or `redis://host:port/db?prefix=p`. */
    cache: z.string().default('memory:'),
    /** Largest file accepted (REST and tus). */
    maxUploadBytes: z
      .number()
      .int()
      .min(0)
      .default(64 * GiB),
    /**
     * Block size for bodies of unknown length (chunked REST bodies, multipart, tus PATCH without
     * Content-Length): each block is held in memory once, then appended to the storage.
     */
    uploadBlockBytes: z
      .number()
      .int()
      .min(64 * 1024)
      .max(256 * MiB)
      .default(8 * MiB),
    /** How long a file's stat (size, sha-256, type, mtime) is reused for downloads. */
    statCacheMs: z.number().int().min(0).default(2000),
    /** How long a user → storages answer from the tracker is reused. */
    locateCacheMs: z.number().int().min(0).default(2000),
    /** Longest wait for the next bytes from a tracker or storage. */
    ioTimeoutMs: z.number().int().min(100).default(30_000),
    /**
     * Connections to each tracker and storage (Node entry). A download holds one for as long as
     * it streams, so this bounds the concurrent downloads per storage; requests beyond it wait
     * (at most 256 of them, 10 s) for one to free up.
     */
    upstreamConnections: z.number().int().min(1).max(10_000).default(512),
    timeouts: timeoutsSchema.prefault({}),
    limits: limitsSchema.prefault({}),
    auth: authSchema.prefault({}),
    downloads: downloadsSchema.prefault({}),
    /** Allowed browser origins; `*` = any. */
    corsOrigins: z.array(z.string().min(1)).min(1).default(['*']),
    /** A tus upload not touched for this long expires and is deleted by the sweeper. */
    tusExpiryMs: z
      .number()
      .int()
      .min(1000)
      .default(24 * 3600 * 1000),
    /** How often the sweeper looks for expired tus uploads (0 = never, e.g. tests driving it). */
    tusSweepIntervalMs: z.number().int().min(0).default(60_000),
    /** Per-upload lock lifetime; renewed while a PATCH streams. */
    tusLockTtlMs: z.number().int().min(1000).default(30_000),
  })
  .strict();

export type GatewayConfig = z.infer<typeof configSchema>;
export type GatewayConfigInput = z.input<typeof configSchema>;

/** Validates a raw config object (defaults filled in) and freezes it. */
export function parseGatewayConfig(raw: unknown): GatewayConfig {
  return Object.freeze(configSchema.parse(raw));
}
