output "user_data" {
  description = "Cloud-init user data of every host of the environment (name → document), from all the roles."
  value = merge(
    merge([for role, p in module.vip_pair : p.user_data]...),
    merge([for name, g in module.storage_group : g.user_data]...),
    merge([for g in module.gateways : g.user_data]...),
    merge([for d in module.data : d.user_data]...),
  )
  sensitive = true
}

output "tracker_vip" {
  description = "The tracker VIP (keepalived), no prefix length."
  value       = module.vip_pair["tracker"].vip
}

output "tracker_endpoint" {
  description = "`VIP:port` of the trackers (what clients and storages use, `dsm --trackers`)."
  value       = module.vip_pair["tracker"].endpoint
}

output "trackers" {
  description = "The tracker pair's hosts (name → private address) and port: an environment maps them to the hosts' public addresses for a gateway outside the private network (the Worker)."
  value = {
    hosts = module.vip_pair["tracker"].hosts
    port  = module.vip_pair["tracker"].port
  }
}

output "id_vip" {
  description = "The id-server VIP, no prefix length."
  value       = module.vip_pair["id"].vip
}

output "id_endpoint" {
  description = "`VIP:port` of the id servers (what the storages use)."
  value       = module.vip_pair["id"].endpoint
}

output "storage_groups" {
  description = "Each storage group: its hosts, volume, mount point, storage addresses and brick volume size (GB, 0 = none)."
  value = {
    for name, g in module.storage_group : name => {
      hosts             = g.hosts
      volume            = g.volume
      mount_point       = g.mount_point
      storage_addresses = g.storage_addresses
      brick_size_gb     = g.brick_size_gb
    }
  }
}

output "gateways" {
  description = "The gateway pool (`hosts`, `upstreams`, `port`, `health_path` for a load balancer), or null when dsm.json has no gateways."
  value = one([for g in module.gateways : {
    hosts       = g.hosts
    upstreams   = g.upstreams
    port        = g.port
    health_path = g.health_path
  }])
}

output "mysql_address" {
  description = "`host:port` of MySQL on the data host, or null when dsm.json has no data section."
  value       = one([for d in module.data : d.mysql_address])
}

output "redis_address" {
  description = "`host:port` of Redis on the data host, or null when dsm.json has no data section."
  value       = one([for d in module.data : d.redis_address])
}
