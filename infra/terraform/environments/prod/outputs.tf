output "gateway_url" {
  description = "Public URL of the gateways (through the load balancer)."
  value       = var.domain == "" ? "http://${hcloud_load_balancer.gateway.ipv4}" : "https://${var.domain}"
}

output "tracker_vip" {
  description = "The tracker VIP on the private network."
  value       = module.cluster.tracker_vip
}

output "tracker_endpoint" {
  description = "`VIP:port` of the trackers (`dsm --trackers`, from inside the private network)."
  value       = module.cluster.tracker_endpoint
}

output "id_vip" {
  description = "The id-server VIP on the private network."
  value       = module.cluster.id_vip
}

output "id_endpoint" {
  description = "`VIP:port` of the id servers."
  value       = module.cluster.id_endpoint
}

output "storage_groups" {
  description = "Each storage group: its hosts, volume, mount point and storage addresses."
  value       = module.cluster.storage_groups
}

output "mysql_address" {
  description = "`host:port` of MySQL on the data VM."
  value       = module.cluster.mysql_address
}

output "redis_address" {
  description = "`host:port` of Redis on the data VM."
  value       = module.cluster.redis_address
}

output "servers" {
  description = "Every VM: role, private address and public IPv4 (for SSH)."
  value = {
    for h, v in local.hosts : h => {
      role        = v.role
      private_ip  = v.address
      public_ipv4 = hcloud_server.host[h].ipv4_address
    }
  }
}

output "prometheus_config" {
  description = "Path of the rendered Prometheus scrape configuration (rendered/<env>/prometheus.yml): one dsm-<role> job per role, targets the hosts' admin listeners."
  value       = "${local.rendered_dir}/prometheus.yml"
}

output "worker_gateway" {
  description = "The Cloudflare Worker gateway when worker_gateway.enabled (script name, routes, trackers it dials, the migration tag to set as migrations_applied next), else null."
  value = one([for w in module.worker_gateway : {
    script_name   = w.script_name
    routes        = w.routes
    trackers      = w.trackers
    migration_tag = w.migration_tag
  }])
}
