terraform {
  required_version = ">= 1.5.0"
}

# One storage group: three hosts, a brick each on an attached volume, the GlusterFS replica
# volume, its FUSE mount on every member and the storage node. Provider-neutral: the
# environment creates the VMs (user_data below) and the brick volumes (brick_size_gb).

locals {
  manifest_file = "${var.rendered_dir}/manifest.json"
  manifest      = fileexists(local.manifest_file) ? jsondecode(file(local.manifest_file)) : null
  group         = local.manifest == null ? null : try(local.manifest.storageGroups[var.name], null)

  rendered_ok = local.manifest != null && try(local.manifest.inputSha256 == var.inputs_sha256, false)
  hosts_ok    = local.group != null && try(jsonencode(local.group.hosts) == jsonencode(var.hosts) && local.group.port == var.port, false)
  secrets_ok  = local.manifest != null && try(alltrue([for s in local.manifest.secrets : contains(keys(var.secrets), s)]), false)

  # templatefile only fills in the secrets: the gluster steps and the mount were rendered by
  # @dsm/ha's glusterGroupSteps
  # a missing secret leaves user_data empty, so the precondition (not templatefile) names it
  user_data = local.manifest == null || !local.secrets_ok ? {} : {
    for name in keys(var.hosts) : name => templatefile("${var.rendered_dir}/${name}/user-data.yaml.tftpl", var.secrets)
  }
}
