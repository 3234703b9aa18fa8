output "gateway_url" {
  description = "URL of the (single) dev gateway; put a load balancer in front to use more than one."
  value       = "http://${module.gateways.upstreams[0]}"
}

output "tracker_vip" {
  description = "The tracker VIP (keepalived, VRRP multicast on the hosts' LAN)."
  value       = module.trackers.vip
}

output "tracker_endpoint" {
  description = "`VIP:port` of the trackers (`dsm --trackers`)."
  value       = module.trackers.endpoint
}

output "id_vip" {
  description = "The id-server VIP."
  value       = module.id_servers.vip
}

output "id_endpoint" {
  description = "`VIP:port` of the id servers (what the storages use)."
  value       = module.id_servers.endpoint
}

output "storage_groups" {
  description = "Each storage group: its hosts, volume, mount point and storage addresses."
  value = {
    for name, g in module.storage_group : name => {
      hosts             = g.hosts
      volume            = g.volume
      mount_point       = g.mount_point
      storage_addresses = g.storage_addresses
    }
  }
}

output "mysql_address" {
  description = "`host:port` of MySQL on the data host."
  value       = module.data.mysql_address
}

output "redis_address" {
  description = "`host:port` of Redis on the data host."
  value       = module.data.redis_address
}
