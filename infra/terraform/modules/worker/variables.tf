variable "account_id" {
  description = "Cloudflare account id (32 hex digits) the Worker script, its Durable Object namespace and its cron trigger belong to."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-f]{32}$", var.account_id))
    error_message = "account_id is 32 lowercase hex digits (dashboard: Workers & Pages, Account details)."
  }
}

variable "zone_id" {
  description = "Id (32 hex digits) of the Cloudflare zone the routes are in."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-f]{32}$", var.zone_id))
    error_message = "zone_id is 32 lowercase hex digits (dashboard: the zone's Overview)."
  }
}

variable "script_name" {
  description = "Name of the Worker script (`name` in gateway/wrangler.toml): the same name makes `wrangler deploy` and `terraform apply` update one Worker."
  type        = string
  default     = "dsm-gateway"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9_-]{0,62}$", var.script_name))
    error_message = "script_name is 1-63 of a-z 0-9 _ -, starting with a letter or digit."
  }
}

variable "bundle_file" {
  description = "Path of the built Worker bundle, `gateway/dist/worker.js` from `npx wrangler deploy --dry-run --outdir dist` (in gateway/); uploaded as the main module, re-uploaded when its SHA-256 changes."
  type        = string

  validation {
    condition     = can(regex("\\.m?js$", var.bundle_file)) && fileexists(var.bundle_file)
    error_message = "bundle_file must name an existing .js bundle: run `npx wrangler deploy --dry-run --outdir dist` in gateway/ first."
  }
}

variable "compatibility_date" {
  description = "Workers runtime compatibility date; keep it equal to `compatibility_date` in gateway/wrangler.toml (a test compares them)."
  type        = string
  default     = "2026-04-26"

  validation {
    condition     = can(regex("^[0-9]{4}-[0-9]{2}-[0-9]{2}$", var.compatibility_date))
    error_message = "compatibility_date is YYYY-MM-DD."
  }
}

variable "compatibility_flags" {
  description = "Workers runtime compatibility flags; keep them equal to `compatibility_flags` in gateway/wrangler.toml (a test compares them)."
  type        = list(string)
  default     = ["nodejs_compat"]

  validation {
    condition     = contains(var.compatibility_flags, "nodejs_compat")
    error_message = "The gateway bundle needs the nodejs_compat flag."
  }
}

variable "routes" {
  description = "Route patterns of the Worker in the zone, e.g. `media.example.com/*` (no scheme). Each hostname needs a proxied DNS record in the zone (README)."
  type        = list(string)

  validation {
    condition     = length(var.routes) >= 1 && alltrue([for r in var.routes : can(regex("^[*]?[A-Za-z0-9.-]+[.][A-Za-z]{2,}/[^ ]*$", r))])
    error_message = "At least one route, each `host/path` with an optional leading * and no scheme (e.g. media.example.com/*)."
  }
}

variable "trackers" {
  description = "`address:port` of every tracker the Worker connects to (the `DSM_TRACKERS` binding). Public addresses: Workers refuse to connect to private, loopback and link-local ranges."
  type        = list(string)

  validation {
    condition = length(var.trackers) >= 1 && alltrue([
      for t in var.trackers : can(regex("^[A-Za-z0-9.-]+:[0-9]{1,5}$", t)) && !can(regex("^(10[.]|127[.]|169[.]254[.]|192[.]168[.]|172[.](1[6-9]|2[0-9]|3[01])[.]|localhost:)", t))
    ])
    error_message = "At least one tracker, each host:port at a public address (Workers cannot reach 10/8, 172.16/12, 192.168/16, 127/8, 169.254/16)."
  }
}

variable "gateway_config" {
  description = "The gateway config (the keys of gateway.json, as in `[vars.DSM_GATEWAY]` of gateway/wrangler.toml), bound as the JSON binding `DSM_GATEWAY`. No secrets here (they are the secret bindings below), no `trackers` (var.trackers), no `listen`/`admin.listen` (a Worker has no listener)."
  type        = any
  default = {
    maxUploadBytes     = 5368709120
    statCacheMs        = 2000
    locateCacheMs      = 2000
    invalidationPollMs = 1000
    edgeCache = {
      enabled     = true
      sliceBytes  = 2097152
      statTtlMs   = 60000
      memoryBytes = 16777216
    }
    auth = { mode = "jwt" }
  }

  validation {
    condition     = try(var.gateway_config.auth.mode, "none") != "none" || try(var.gateway_config.auth.allowAnonymousUploads, false) == true
    error_message = "A Worker is public: auth.mode \"jwt\" (or auth.allowAnonymousUploads = true), as the Worker itself refuses mode none."
  }
  validation {
    condition = alltrue([for k in ["trackers", "listen"] : !can(var.gateway_config[k])]) && !can(var.gateway_config.admin.listen) && alltrue([
      for k in ["hs256Keys", "hs256Secret"] : !can(var.gateway_config.auth[k])
    ]) && !can(var.gateway_config.downloads.signingKeys) && !can(var.gateway_config.admin.token)
    error_message = "gateway_config may not set trackers, listen, admin.listen or a secret (auth.hs256Keys/hs256Secret, downloads.signingKeys, admin.token): those are variables of this module."
  }
}

variable "log_level" {
  description = "`DSM_LOG_LEVEL` of the Worker: debug, info, warn or error."
  type        = string
  default     = "warn"

  validation {
    condition     = contains(["debug", "info", "warn", "error"], var.log_level)
    error_message = "log_level is debug, info, warn or error."
  }
}

variable "public_url" {
  description = "`DSM_PUBLIC_URL`: base of the URLs in replies (e.g. `https://media.example.com`); empty = the request's own origin."
  type        = string
  default     = ""

  validation {
    condition     = var.public_url == "" || can(regex("^https?://[^/ ]+$", var.public_url))
    error_message = "public_url is empty or scheme://host[:port] without a path."
  }
}

variable "auth_hs256_keys" {
  description = "HS256 token keys by key id (the secret binding `DSM_AUTH_HS256_KEYS`, as JSON): each at least 32 characters; the same keys as the VM gateways' `auth.hs256Keys`."
  type        = map(string)
  sensitive   = true

  validation {
    condition     = length(var.auth_hs256_keys) >= 1 && alltrue([for k, v in var.auth_hs256_keys : can(regex("^[A-Za-z0-9._-]{1,64}$", k)) && length(v) >= 32])
    error_message = "At least one key; key ids 1-64 of A-Za-z0-9._- and each secret at least 32 characters."
  }
}

variable "signing_keys" {
  description = "URL-signing keys by key id (the secret binding `DSM_SIGNING_KEYS`, as JSON), each at least 16 characters; empty = no binding (no signed downloads)."
  type        = map(string)
  default     = {}
  sensitive   = true

  validation {
    condition     = alltrue([for k, v in var.signing_keys : can(regex("^[A-Za-z0-9._-]{1,64}$", k)) && length(v) >= 16])
    error_message = "Key ids 1-64 of A-Za-z0-9._- and each secret at least 16 characters."
  }
}

variable "admin_token" {
  description = "Bearer token for `/metrics` and the details of `/readyz` (the secret binding `DSM_ADMIN_TOKEN`), at least 32 characters; empty = no binding (both stay closed)."
  type        = string
  default     = ""
  sensitive   = true

  validation {
    condition     = var.admin_token == "" || length(var.admin_token) >= 32
    error_message = "admin_token is empty or at least 32 characters."
  }
}

variable "cluster_key" {
  description = "Secret of the node-protocol cluster key (the secret binding `DSM_CLUSTER_KEY`; its id is `cluster.keyId` of gateway_config, default `main`), at least 32 characters; empty = no binding, the Worker does not authenticate to the nodes."
  type        = string
  default     = ""
  sensitive   = true

  validation {
    condition     = var.cluster_key == "" || length(var.cluster_key) >= 32
    error_message = "cluster_key is empty or at least 32 characters."
  }
}

variable "durable_objects" {
  description = "Durable Object bindings: binding name → exported class of the bundle (`[[durable_objects.bindings]]` of gateway/wrangler.toml; `DSM_TUS` holds the tus upload state)."
  type        = map(string)
  default     = { DSM_TUS = "TusStateObject" }

  validation {
    condition     = alltrue([for n, c in var.durable_objects : can(regex("^[A-Z][A-Z0-9_]*$", n)) && can(regex("^[A-Za-z_$][A-Za-z0-9_$]*$", c))])
    error_message = "Binding names are UPPER_CASE identifiers, class names JavaScript identifiers."
  }
}

variable "migrations" {
  description = "Durable Object migrations in order, as `[[migrations]]` of gateway/wrangler.toml (`tag`, `new_sqlite_classes`, `new_classes`, `deleted_classes`, `renamed_classes`). The first apply creates the namespaces (the DO namespace is made by its migration, there is no separate resource)."
  type = list(object({
    tag                = string
    new_sqlite_classes = optional(list(string), [])
    new_classes        = optional(list(string), [])
    deleted_classes    = optional(list(string), [])
    renamed_classes    = optional(list(object({ from = string, to = string })), [])
  }))
  default = [{ tag = "v1", new_sqlite_classes = ["TusStateObject"] }]

  validation {
    condition     = length(distinct([for m in var.migrations : m.tag])) == length(var.migrations)
    error_message = "Migration tags must be unique."
  }
}

variable "migrations_applied" {
  description = "Tag of the last migration the deployed script already has (`\"\"` for a new script; afterwards the output `migration_tag`, or what `wrangler deploy` last applied). Only the migrations after it are sent, with it as `old_tag`: Cloudflare refuses an upload whose `old_tag` is not the script's tag."
  type        = string
  default     = ""

  validation {
    condition     = var.migrations_applied == "" || contains([for m in var.migrations : m.tag], var.migrations_applied)
    error_message = "migrations_applied is empty or one of the migrations' tags."
  }
}

variable "sweep_crons" {
  description = "Cron expressions of a Cron Trigger that runs the Worker's `scheduled` handler (the tus sweeper); empty = no trigger (`[triggers] crons` of gateway/wrangler.toml)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.sweep_crons : length(split(" ", trimspace(c))) == 5])
    error_message = "Each cron expression has five fields (minute hour day month weekday)."
  }
}

variable "workers_dev" {
  description = "Also serve the Worker at `<script>.<account>.workers.dev` (`workers_dev` of gateway/wrangler.toml). Off: only the routes reach it."
  type        = bool
  default     = false
}
