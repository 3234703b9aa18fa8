output "user_data" {
  description = "Cloud-init user data per host (name → document): Node, the dsm release, the gateway config, its systemd unit."
  value       = local.user_data
  sensitive   = true

  precondition {
    condition     = local.rendered_ok
    error_message = "${var.rendered_dir} is missing or was rendered from another dsm.json: run `npm run render -w @dsm/terraform`."
  }
  precondition {
    condition     = local.hosts_ok
    error_message = "hosts or port differ from gateways in the rendered manifest: pass the values of dsm.json and re-render."
  }
  precondition {
    condition     = local.secrets_ok
    error_message = "The secrets variable lacks a name the rendered files use (see secrets in the rendered manifest.json)."
  }
}

output "hosts" {
  description = "The gateway hosts (name → address)."
  value       = var.hosts
}

output "upstreams" {
  description = "`address:port` of every gateway: the load balancer's targets."
  value       = [for a in values(var.hosts) : "${a}:${var.port}"]
}

output "port" {
  description = "Port of the gateways."
  value       = var.port
}

output "health_path" {
  description = "HTTP path a load balancer checks (200 = healthy)."
  value       = "/healthz"
}
