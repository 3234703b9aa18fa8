terraform {
  required_version = ">= 1.5.0"
}

# A pair of trackers or id servers behind a keepalived VIP (`role` says which). Provider-neutral: it
# turns the rendered provisioning of each host into cloud-init user data; the environment puts that
# on VMs (or bare metal).

locals {
  # the role's section of dsm.json and of the rendered manifest, and its usual port
  section_name = { tracker = "trackers", id = "idServers" }[var.role]
  port         = coalesce(var.port, { tracker = 21000, id = 22000 }[var.role])

  manifest_file = "${var.rendered_dir}/manifest.json"
  manifest      = fileexists(local.manifest_file) ? jsondecode(file(local.manifest_file)) : null
  section       = local.manifest == null ? null : local.manifest[local.section_name]

  rendered_ok = local.manifest != null && try(local.manifest.inputSha256 == var.inputs_sha256, false)
  hosts_ok    = local.section != null && try(jsonencode(local.section.hosts) == jsonencode(var.hosts), false)
  vip_ok      = local.section != null && try(local.section.vip == var.vip && local.section.port == local.port, false)
  secrets_ok  = local.manifest != null && try(alltrue([for s in local.manifest.secrets : contains(keys(var.secrets), s)]), false)

  vip_address = split("/", var.vip)[0]

  # templatefile only fills in the secrets: everything else was rendered by @dsm/ha's renderers
  # a missing secret leaves user_data empty, so the precondition (not templatefile) names it
  user_data = local.manifest == null || !local.secrets_ok ? {} : {
    for name in keys(var.hosts) : name => templatefile("${var.rendered_dir}/${name}/user-data.yaml.tftpl", var.secrets)
  }
}
