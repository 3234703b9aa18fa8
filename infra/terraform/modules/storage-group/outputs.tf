output "user_data" {
  description = "Cloud-init user data per host (name → document): Node, the dsm release, brick preparation, glusterd, the volume steps (first host), the mount, the storage node."
  value       = local.user_data
  sensitive   = true

  precondition {
    condition     = local.rendered_ok
    error_message = "${var.rendered_dir} is missing or was rendered from another dsm.json: run `npm run render -w @dsm/terraform`."
  }
  precondition {
    condition     = local.hosts_ok
    error_message = "Group ${var.name}: hosts or port differ from the rendered manifest (or the group is not in dsm.json): re-render."
  }
  precondition {
    condition     = local.secrets_ok
    error_message = "The secrets variable lacks a name the rendered files use (see secrets in the rendered manifest.json)."
  }
}

output "hosts" {
  description = "The group's hosts (name → address)."
  value       = var.hosts
}

output "volume" {
  description = "The GlusterFS volume of the group."
  value       = var.name
}

output "mount_point" {
  description = "Where every member mounts the volume (the storage node's store path)."
  value       = try(local.group.mountPoint, null)
}

output "brick_size_gb" {
  description = "Size of the brick volume to attach to each host (`brickSizeGb` in dsm.json; 0 = none)."
  value       = try(local.group.brickSizeGb, 0)
}

output "storage_addresses" {
  description = "`address:port` of the group's storage nodes."
  value       = [for a in values(var.hosts) : "${a}:${var.port}"]
}
