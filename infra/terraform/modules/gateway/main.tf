terraform {
  required_version = ">= 1.5.0"
}

# The HTTP gateway pool (Node entry). Provider-neutral: the environment creates the VMs and the
# load balancer in front of them (health check: GET /healthz).

locals {
  manifest_file = "${var.rendered_dir}/manifest.json"
  manifest      = fileexists(local.manifest_file) ? jsondecode(file(local.manifest_file)) : null
  section       = local.manifest == null ? null : local.manifest.gateways

  rendered_ok = local.manifest != null && try(local.manifest.inputSha256 == var.inputs_sha256, false)
  hosts_ok    = local.section != null && try(jsonencode(local.section.hosts) == jsonencode(var.hosts) && local.section.port == var.port, false)
  secrets_ok  = local.manifest != null && try(alltrue([for s in local.manifest.secrets : contains(keys(var.secrets), s)]), false)

  # a missing secret leaves user_data empty, so the precondition (not templatefile) names it
  user_data = local.manifest == null || !local.secrets_ok ? {} : {
    for name in keys(var.hosts) : name => templatefile("${var.rendered_dir}/${name}/user-data.yaml.tftpl", var.secrets)
  }
}
