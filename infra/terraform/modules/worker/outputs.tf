output "script_name" {
  description = "Name of the Worker script (what `wrangler deploy`, `wrangler tail` and `wrangler secret put` act on)."
  value       = cloudflare_workers_script.gateway.script_name
}

output "routes" {
  description = "The route patterns that send requests to the Worker."
  value       = [for r in cloudflare_workers_route.gateway : r.pattern]
}

output "bundle_sha256" {
  description = "SHA-256 of the uploaded bundle (compare with `sha256sum gateway/dist/worker.js`)."
  value       = filesha256(var.bundle_file)
}

output "trackers" {
  description = "The `DSM_TRACKERS` binding: the trackers the Worker connects to."
  value       = join(",", var.trackers)
}

output "durable_objects" {
  description = "Durable Object bindings of the script (binding name → class); their namespaces were made by the migrations."
  value       = var.durable_objects
}

output "migration_tag" {
  description = "Tag of the last Durable Object migration the script has after this apply: set `migrations_applied` to it for the next apply."
  value       = length(var.migrations) == 0 ? "" : var.migrations[length(var.migrations) - 1].tag
}

output "bindings" {
  description = "Name and type of every binding of the script (the values of secret ones are not shown)."
  value       = { for b in local.bindings : b.name => b.type }
}
