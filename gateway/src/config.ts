// a namespace import, not `{ z }`: esbuild then keeps only what is used (the Worker bundle
// would carry every zod locale otherwise, gateway/README.md "Cloudflare Worker")
import * as z from 'zod';

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

/** Shape of an IPv4/IPv6 address with an optional prefix length (checked fully by the Node entry). */
const IP_OR_CIDR = /^(?:\d{1,3}(?:\.\d{1,3}){3}(?:\/\d{1,2})?|[0-9A-Fa-f:.]{2,45}(?:\/\d{1,3})?)$/;

const downloadPolicy = z.enum(['public', 'signed']);
export type DownloadPolicy = z.infer<typeof downloadPolicy>;

/** Key ids of HS256 token keys and URL-signing keys: what a `kid` header or `?kid=` may hold. */
const keyId = z.string().regex(/^[A-Za-z0-9._-]{1,64}$/, 'key ids are 1..64 of A-Z a-z 0-9 . _ -');
const byteLength = (s: string) => new TextEncoder().encode(s).length;

/** Key id of the legacy single `hs256Secret` (tokens without a `kid` are checked against it). */
export const LEGACY_HS256_KID = 'default';

const authSchema = z
  .object({
    /**
     * `none`: anyone may upload, as `defaultApp`/`defaultUser`, and nobody may delete over HTTP;
     * refused on a non-loopback `listen` unless `allowAnonymousUploads` is true.
     * `jwt`: a bearer token is required (uploads may be let through without one, see below).
     */
    mode: z.enum(['none', 'jwt']).default('none'),
    /**
     * Anonymous uploads (as `defaultApp`/`defaultUser`) on a public address: mode `none` may then
     * listen on a non-loopback address, and mode `jwt` accepts uploads without a token. Deletes
     * are never anonymous.
     */
    allowAnonymousUploads: z.boolean().default(false),
    /** HS256 token keys by key id; a token names its key in the `kid` header. Two may be live
     * while one rotates out. Each at least 32 bytes. */
    hs256Keys: z.record(keyId, z.string()).default({}),
    /** Key id `dsm token` signs with (default: the only key, or the legacy secret). */
    hs256KeyId: keyId.optional(),
    /** Legacy single HS256 secret (= key id "default"; tokens without `kid` are checked against it). */
    hs256Secret: z.string().default(''),
    /** A JWKS endpoint for asymmetric tokens (RS256, ES256, EdDSA …); optional. */
    jwksUrl: z.url().optional(),
    /** Expected `iss` / `aud` claims, when set. */
    issuer: z.string().min(1).optional(),
    audience: z.string().min(1).optional(),
    /** Tokens must carry `exp` (tokens that never expire are refused). */
    requireExp: z.boolean().default(true),
    clockToleranceSec: z.number().int().min(0).default(30),
    /** Identity of anonymous uploads. */
    defaultApp: z.string().min(1).max(15).default('tnvideo'),
    defaultUser: z.string().min(1).max(255).default('tnv001'),
  })
  .strict()
  .superRefine((a, ctx) => {
    for (const [kid, secret] of Object.entries(a.hs256Keys)) {
      if (byteLength(secret) < 32)
        ctx.addIssue({ code: 'custom', path: ['hs256Keys', kid], message: 'must be at least 32 bytes' });
    }
    if (a.hs256Secret && byteLength(a.hs256Secret) < 32) {
      ctx.addIssue({ code: 'custom', path: ['hs256Secret'], message: 'must be at least 32 bytes' });
    }
    if (a.hs256Secret && Object.hasOwn(a.hs256Keys, LEGACY_HS256_KID)) {
      ctx.addIssue({
        code: 'custom',
        path: ['hs256Secret'],
        message: `hs256Secret is key id "${LEGACY_HS256_KID}", which hs256Keys defines too`,
      });
    }
    if (a.hs256KeyId !== undefined && !Object.hasOwn(hs256KeySet(a), a.hs256KeyId)) {
      ctx.addIssue({ code: 'custom', path: ['hs256KeyId'], message: 'not a key of hs256Keys' });
    }
    if (a.mode !== 'jwt') return;
    if (Object.keys(hs256KeySet(a)).length === 0 && !a.jwksUrl) {
      ctx.addIssue({
        code: 'custom',
        path: ['hs256Keys'],
        message: 'mode jwt needs hs256Keys (or hs256Secret) or jwksUrl',
      });
    }
  });

/** Every HS256 key by key id: `hs256Keys` plus the legacy `hs256Secret` as key id "default". */
export function hs256KeySet(a: {
  hs256Keys: Record<string, string>;
  hs256Secret: string;
}): Record<string, string> {
  const out: Record<string, string> = Object.create(null);
  for (const [k, v] of Object.entries(a.hs256Keys)) out[k] = v;
  if (a.hs256Secret) out[LEGACY_HS256_KID] = a.hs256Secret;
  return out;
}

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
    /**
     * Longest life of a signed URL: one whose `exp` lies further ahead is refused, and
     * `dsm sign` refuses to make it. Default 7 days.
     */
    maxSignedUrlLifetimeSec: z
      .number()
      .int()
      .min(1)
      .default(7 * 24 * 3600),
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
    if (d.signingKeyId !== undefined && !Object.hasOwn(d.signingKeys, d.signingKeyId)) {
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
    /**
     * Addresses (IPs or CIDR blocks) of the load balancers / CDN edges in front of the gateway
     * (Node entry). A connection from one of them is not counted against
     * `connectionsPerClient`, and its requests count under the client named in
     * `X-Forwarded-For` (the right-most address that is not itself a trusted proxy; the proxy's
     * own address when there is none). From any other peer `X-Forwarded-For` is ignored: a
     * client cannot pick the address it is counted under.
     */
    trustedProxies: z
      .array(z.string().regex(IP_OR_CIDR, 'expected an IP address or a CIDR block'))
      .max(1024)
      .default([]),
  })
  .strict();

const adminSchema = z
  .object({
    /**
     * A second listener for operators: `/metrics`, `/readyz` with its details, `/healthz`.
     * Empty (the default): none. Keep it on loopback or a private network.
     */
    listen: z.union([z.literal(''), listenAddress]).default(''),
    /**
     * A bearer token that unlocks `/metrics` and the details of `/readyz` on the public listener
     * (the Worker has no second listener). Unset: the public `/readyz` says only ready or not,
     * and the public `/metrics` is 404. At least 32 bytes.
     */
    token: z
      .string()
      .refine((t) => byteLength(t) >= 32, 'must be at least 32 bytes')
      .optional(),
    /**
     * `host:port` of the id servers, for the status page (`/status` on the admin listener
     * PINGs each; the gateway itself never talks to them). At most 32.
     */
    idServers: z.array(trackerAddress).max(32).default([]),
    /**
     * Base URLs (`http://host:port`) of the nodes' admin listeners: the status page reads each
     * one's `/metrics` (2 s timeout, 1 MiB) for `dsm_node_vip_held` to show which node holds a
     * VIP. At most 32.
     */
    nodeAdmins: z
      .array(
        z
          .string()
          .max(256)
          .refine((s) => {
            try {
              const u = new URL(s);
              return (u.protocol === 'http:' || u.protocol === 'https:') && !u.username && !u.password;
            } catch {
              return false;
            }
          }, 'expected an http(s)://host:port URL without credentials'),
      )
      .max(32)
      .default([]),
  })
  .strict();

/** Loopback listen hosts: the only ones where the embedded default (`auth.mode: none`) may run. */
export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/**
 * How the gateway reaches the nodes. The node-protocol key (nodes with `auth.required`) comes
 * from `keyFile` (Node entry) or the environment / secret binding `DSM_CLUSTER_KEY` (which wins);
 * without either the gateway does not authenticate (the loopback default).
 */
const clusterSchema = z
  .object({
    /** Id of the cluster key (the nodes' `auth.keys[].id`). */
    keyId: z
      .string()
      .regex(/^[A-Za-z0-9._-]{1,32}$/, 'key ids are 1-32 of [A-Za-z0-9._-]')
      .default('main'),
    /** File holding the key's secret (≥ 32 bytes; Node entry; relative to the config file). */
    keyFile: z.string().default(''),
    /** TLS to the nodes (their `tls.certFile`): "on" or "off". */
    tls: z.enum(['off', 'on']).default('off'),
    /** PEM file of the authority that signed the nodes' certificates (Node entry; default: system's). */
    caFile: z.string().default(''),
    /** Name checked in the nodes' certificates (default: the address dialled). */
    servername: z.string().default(''),
  })
  .strict();

/** Gateway configuration. Every key has a default, so an empty file works. */
export const configSchema = z
  .object({
    /** Where the HTTP server listens (Node entry). */
    listen: listenAddress.default('127.0.0.1:8080'),
    /**
     * Node entry: connections start in the hot lane, which answers the small-file GETs and HEADs
     * of the fast path itself and gives a connection to node:http at its first other request
     * (gateway/src/hot-lane.ts). false: every connection goes to node:http.
     */
    hotLane: z.boolean().default(true),
    /** Base of the URLs put in replies (`url`, tus `Location`); default: the request's origin. */
    publicUrl: z.url().optional(),
    trackers: z.array(trackerAddress).min(1).default(['127.0.0.1:21000']),
    /** Upload state, locks and counters: `memory:` or `redis://host:port/db?prefix=p`. */
    cache: z.string().default('memory:'),
    /**
     * Most keys of the in-process store (`cache: memory:` and the Worker): a tus creation past it
     * is refused (503) instead of growing the heap. About 3 keys per upload in progress.
     */
    memoryCacheMaxKeys: z.number().int().min(100).max(10_000_000).default(50_000),
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
    /**
     * How long a file's stat (size, sha-256, type, mtime) is reused for downloads, and with it a
     * small file's bytes (`fileCache`) and a big file's slices (`rangeCache`). Files never change
     * and a delete through any gateway drops them everywhere within 2 × `invalidationPollMs`
     * (the delete journal in `cache`), so this only bounds how long a delete made around the
     * gateways (straight over the storage protocol, `dsm rm`) can go unseen. 0: no caching.
     */
    statCacheMs: z.number().int().min(0).default(300_000),
    /**
     * How often a gateway process reads the delete journal in `cache` (see `statCacheMs`): a
     * delete through one gateway is seen by every other within twice this. The journal is read
     * on demand (no timer): a busy gateway reads it at most this often, an idle one on its next
     * download. While `cache` cannot be read, nothing cached is served.
     */
    invalidationPollMs: z.number().int().min(5).max(10_000).default(100),
    /**
     * Small immutable files (posters, thumbnails, manifests, init segments) kept in memory after
     * their first read, ranges and conditional requests served from there. 0 bytes: off.
     */
    fileCache: z
      .object({
        /** Largest file kept. */
        maxFileBytes: z
          .number()
          .int()
          .min(0)
          .max(64 * MiB)
          .default(256 * 1024),
        /** Bytes of all files kept (least recently used go first); 0 disables the cache. */
        maxBytes: z
          .number()
          .int()
          .min(0)
          .max(64 * GiB)
          .default(64 * MiB),
      })
      .strict()
      .prefault({}),
    /**
     * Range coalescing: a reply of up to `maxReplyBytes` from a bigger file is served from aligned
     * slices of `sliceBytes`, each read from the storage once however many requests want it at
     * the same time (a CDN's range storm), and kept (least recently used go first) up to
     * `maxBytes`. 0 bytes: every reply streams straight from the storage.
     */
    rangeCache: z
      .object({
        sliceBytes: z
          .number()
          .int()
          .min(64 * 1024)
          .max(64 * MiB)
          .default(MiB),
        /** Bytes of all slices kept; 0 disables coalescing. */
        maxBytes: z
          .number()
          .int()
          .min(0)
          .max(64 * GiB)
          .default(16 * MiB),
        /** Longer replies (whole big files) stream straight from the storage. */
        maxReplyBytes: z
          .number()
          .int()
          .min(0)
          .max(GiB)
          .default(16 * MiB),
      })
      .strict()
      .prefault({}),
    /** How long a user → storages answer from the tracker is reused. */
    locateCacheMs: z.number().int().min(0).default(2000),
    /** Most users whose storages are cached (least recently used go first). */
    locateCacheMax: z.number().int().min(1).max(10_000_000).default(10_000),
    /** Most files whose stat is cached (least recently used go first). */
    statCacheMax: z.number().int().min(1).max(10_000_000).default(10_000),
    /** Longest wait for the next bytes from a tracker or storage. */
    ioTimeoutMs: z.number().int().min(100).default(30_000),
    /**
     * Connections to each tracker and storage (Node entry). A download holds one for as long as
     * it streams, so this bounds the concurrent downloads per storage; requests beyond it wait
     * (at most 256 of them, 10 s) for one to free up.
     */
    upstreamConnections: z.number().int().min(1).max(10_000).default(512),
    /**
     * Gateway processes serving the one listen address (Node entry, node:cluster); they share
     * nothing but the cache (Redis). Unset: one per core (os.availableParallelism()).
     */
    workers: z.number().int().min(1).max(64).optional(),
    timeouts: timeoutsSchema.prefault({}),
    limits: limitsSchema.prefault({}),
    auth: authSchema.prefault({}),
    downloads: downloadsSchema.prefault({}),
    admin: adminSchema.prefault({}),
    cluster: clusterSchema.prefault({}),
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
  .strict()
  .superRefine((c, ctx) => {
    // The embedded default lets anyone upload: fine on loopback, never by accident on a network.
    if (
      c.auth.mode === 'none' &&
      !c.auth.allowAnonymousUploads &&
      !isLoopbackHost(parseListen(c.listen).host)
    ) {
      ctx.addIssue({
        code: 'custom',
        path: ['auth', 'mode'],
        message: `"none" is refused on the non-loopback address ${c.listen}: set auth.mode "jwt" (or auth.allowAnonymousUploads true to accept anonymous uploads there)`,
      });
    }
  });

export type GatewayConfig = z.infer<typeof configSchema>;
export type GatewayConfigInput = z.input<typeof configSchema>;

/** Validates a raw config object (defaults filled in) and freezes it. */
export function parseGatewayConfig(raw: unknown): GatewayConfig {
  return Object.freeze(configSchema.parse(raw));
}
