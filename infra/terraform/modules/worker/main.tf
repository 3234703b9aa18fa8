terraform {
  required_version = ">= 1.5.0"
  required_providers {
    cloudflare = {
      source  = "cloudflare/cloudflare"
      version = "~> 5.5"
    }
  }
}

# The gateway as a Cloudflare Worker (gateway/src/worker.ts): the script built by
# `wrangler deploy --dry-run --outdir dist`, its bindings (what gateway/wrangler.toml declares,
# with the environment's values), the Durable Object namespace of the tus state (made by the
# script's migration), the routes and an optional Cron Trigger. The provider is configured by the
# environment (API token with Workers Scripts: Edit on the account, Workers Routes: Edit on the zone).

locals {
  # Durable Object migrations: only those after the tag the script already has, in one upload
  # (what `wrangler deploy` sends); none when the script is up to date.
  migration_tags = [for m in var.migrations : m.tag]
  applied_index  = var.migrations_applied == "" ? -1 : index(local.migration_tags, var.migrations_applied)
  pending        = [for i, m in var.migrations : m if i > local.applied_index]
  migration_steps = length(local.pending) == 0 ? null : {
    old_tag = var.migrations_applied == "" ? null : var.migrations_applied
    new_tag = local.pending[length(local.pending) - 1].tag
    steps = [for m in local.pending : {
      new_sqlite_classes = length(m.new_sqlite_classes) == 0 ? null : m.new_sqlite_classes
      new_classes        = length(m.new_classes) == 0 ? null : m.new_classes
      deleted_classes    = length(m.deleted_classes) == 0 ? null : m.deleted_classes
      renamed_classes    = length(m.renamed_classes) == 0 ? null : m.renamed_classes
    }]
  }

  # [vars] of wrangler.toml: a string is a plain_text binding, a table a json binding
  vars = concat(
    [
      { name = "DSM_TRACKERS", type = "plain_text", text = join(",", var.trackers) },
      { name = "DSM_LOG_LEVEL", type = "plain_text", text = var.log_level },
    ],
    var.public_url == "" ? [] : [{ name = "DSM_PUBLIC_URL", type = "plain_text", text = var.public_url }],
  )
  # whether an optional secret is set is not itself secret (its value stays sensitive)
  secrets = concat(
    [{ name = "DSM_AUTH_HS256_KEYS", type = "secret_text", text = jsonencode(var.auth_hs256_keys) }],
    nonsensitive(length(var.signing_keys) == 0) ? [] : [{ name = "DSM_SIGNING_KEYS", type = "secret_text", text = jsonencode(var.signing_keys) }],
    nonsensitive(var.admin_token == "") ? [] : [{ name = "DSM_ADMIN_TOKEN", type = "secret_text", text = var.admin_token }],
    nonsensitive(var.cluster_key == "") ? [] : [{ name = "DSM_CLUSTER_KEY", type = "secret_text", text = var.cluster_key }],
  )
  bindings = concat(
    local.vars,
    [{ name = "DSM_GATEWAY", type = "json", json = jsonencode(var.gateway_config) }],
    [for name, class in var.durable_objects : { name = name, type = "durable_object_namespace", class_name = class }],
    local.secrets,
  )
}

resource "cloudflare_workers_script" "gateway" {
  account_id  = var.account_id
  script_name = var.script_name

  # the bundle wrangler built; a new SHA-256 uploads it again
  content_file   = var.bundle_file
  content_sha256 = filesha256(var.bundle_file)
  main_module    = basename(var.bundle_file)

  compatibility_date  = var.compatibility_date
  compatibility_flags = var.compatibility_flags

  bindings   = local.bindings
  migrations = local.migration_steps
}

resource "cloudflare_workers_script_subdomain" "gateway" {
  account_id       = var.account_id
  script_name      = cloudflare_workers_script.gateway.script_name
  enabled          = var.workers_dev
  previews_enabled = false
}

resource "cloudflare_workers_route" "gateway" {
  for_each = toset(var.routes)

  zone_id = var.zone_id
  pattern = each.value
  script  = cloudflare_workers_script.gateway.script_name
}

resource "cloudflare_workers_cron_trigger" "sweep" {
  count = length(var.sweep_crons) == 0 ? 0 : 1

  account_id  = var.account_id
  script_name = cloudflare_workers_script.gateway.script_name
  schedules   = [for c in var.sweep_crons : { cron = c }]
}
