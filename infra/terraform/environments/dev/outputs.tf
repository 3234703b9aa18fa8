output "gateway_url" {
  description = "URL of the (single) dev gateway; put a load balancer in front to use more than one."
  value       = "http://${module.cluster.gateways.upstreams[0]}"
}

output "tracker_vip" {
  description = "The tracker VIP (keepalived, VRRP multicast on the hosts' LAN)."
  value       = module.cluster.tracker_vip
}

output "tracker_endpoint" {
  description = "`VIP:port` of the trackers (`dsm --trackers`)."
  value       = module.cluster.tracker_endpoint
}

output "id_vip" {
  description = "The id-server VIP."
  value       = module.cluster.id_vip
}

output "id_endpoint" {
  description = "`VIP:port` of the id servers (what the storages use)."
  value       = module.cluster.id_endpoint
}

output "storage_groups" {
  description = "Each storage group: its hosts, volume, mount point and storage addresses."
  value       = module.cluster.storage_groups
}

output "mysql_address" {
  description = "`host:port` of MySQL on the data host."
  value       = module.cluster.mysql_address
}

output "redis_address" {
  description = "`host:port` of Redis on the data host."
  value       = module.cluster.redis_address
}

output "prometheus_config" {
  description = "Path of the rendered Prometheus scrape configuration (rendered/<env>/prometheus.yml): one dsm-<role> job per role, targets the hosts' admin listeners."
  value       = "${local.rendered_dir}/prometheus.yml"
}
