output "user_data" {
  description = "Cloud-init user data of the data VM (name → document): MariaDB and Redis bound to its private address, the dsm MySQL user. Empty for managed services."
  value       = local.user_data
  sensitive   = true

  precondition {
    condition     = local.rendered_ok
    error_message = "${var.rendered_dir} is missing or was rendered from another dsm.json: run `npm run render -w @dsm/terraform`."
  }
  precondition {
    condition     = local.hosts_ok
    error_message = "hosts differ from data in the rendered manifest (a data VM in dsm.json needs it here, managed services need an empty map)."
  }
  precondition {
    condition     = local.secrets_ok
    error_message = "The secrets variable lacks a name the rendered files use (see secrets in the rendered manifest.json)."
  }
}

output "hosts" {
  description = "The data VM (name → address); empty for managed services."
  value       = var.hosts
}

output "mysql_address" {
  description = "`host:port` of MySQL."
  value       = local.on_vm ? try(local.section.mysql, null) : var.managed_mysql_address
}

output "redis_address" {
  description = "`host:port` of Redis."
  value       = local.on_vm ? try(local.section.redis, null) : var.managed_redis_address
}
