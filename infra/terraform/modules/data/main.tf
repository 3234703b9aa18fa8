terraform {
  required_version = ">= 1.5.0"
}

# MySQL (MariaDB) and Redis on one VM, or managed services (then no host: the node configs in
# dsm.json carry the managed endpoints and this module only reports them).

locals {
  manifest_file = "${var.rendered_dir}/manifest.json"
  manifest      = fileexists(local.manifest_file) ? jsondecode(file(local.manifest_file)) : null
  section       = local.manifest == null ? null : local.manifest.data
  on_vm         = length(var.hosts) > 0

  rendered_ok = local.manifest != null && try(local.manifest.inputSha256 == var.inputs_sha256, false)
  hosts_ok    = local.on_vm ? (local.section != null && try(jsonencode(local.section.hosts) == jsonencode(var.hosts), false)) : local.section == null
  secrets_ok  = local.manifest != null && try(alltrue([for s in local.manifest.secrets : contains(keys(var.secrets), s)]), false)

  # a missing secret leaves user_data empty, so the precondition (not templatefile) names it
  user_data = local.manifest == null || !local.secrets_ok ? {} : {
    for name in keys(var.hosts) : name => templatefile("${var.rendered_dir}/${name}/user-data.yaml.tftpl", var.secrets)
  }
}
