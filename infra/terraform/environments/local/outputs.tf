output "tracker_vip" {
  description = "The tracker VIP (inside the lab's namespaces only)."
  value       = module.trackers.vip
}

output "tracker_endpoint" {
  description = "`VIP:port` of the trackers: what clients in the lab use (`dsm --trackers`)."
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

output "gateway_url" {
  description = "The lab has no gateway (null); `npm start` runs one on 127.0.0.1:8080."
  value       = null
}

output "rendered_dir" {
  description = "The rendered provisioning this environment read."
  value       = local.rendered_dir
}
