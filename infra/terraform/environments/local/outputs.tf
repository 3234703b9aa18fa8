output "tracker_vip" {
  description = "The tracker VIP (inside the lab's namespaces only)."
  value       = module.cluster.tracker_vip
}

output "tracker_endpoint" {
  description = "`VIP:port` of the trackers: what clients in the lab use (`dsm --trackers`)."
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

output "gateway_url" {
  description = "The lab has no gateway (null); `npm start` runs one on 127.0.0.1:8080."
  value       = null
}

output "rendered_dir" {
  description = "The rendered provisioning this environment read."
  value       = local.rendered_dir
}
