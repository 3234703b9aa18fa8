output "user_data" {
  description = "Cloud-init user data per host (name → document): Node, the dsm release, the node config, keepalived.conf, systemd units."
  value       = local.user_data
  sensitive   = true

  precondition {
    condition     = local.rendered_ok
    error_message = "${var.rendered_dir} is missing or was rendered from another dsm.json: run `npm run render -w @dsm/terraform`."
  }
  precondition {
    condition     = local.hosts_ok && local.vip_ok
    error_message = "hosts, vip or port differ from ${local.section_name} in the rendered manifest: pass the values of dsm.json and re-render."
  }
  precondition {
    condition     = local.secrets_ok
    error_message = "The secrets variable lacks a name the rendered files use (see secrets in the rendered manifest.json)."
  }
}

output "hosts" {
  description = "The hosts of the pair (name → address); the preferred master (priority 150) is the first host of the pair in dsm.json."
  value       = var.hosts
}

output "vip" {
  description = "The VIP address (no prefix length)."
  value       = local.vip_address
}

output "endpoint" {
  description = "`VIP:port`: what clients use."
  value       = "${local.vip_address}:${local.port}"
}

output "addresses" {
  description = "`address:port` of every node of the pair."
  value       = [for a in values(var.hosts) : "${a}:${local.port}"]
}

output "port" {
  description = "Port of the nodes."
  value       = local.port
}
