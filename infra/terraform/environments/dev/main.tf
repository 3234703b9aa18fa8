# The dev environment: machines that already exist (bare metal, or VMs from anything), reached
# over SSH. Terraform puts each host's rendered user data into cloud-init's NoCloud seed and runs
# cloud-init there. No provider plugin is needed: terraform_data and provisioners are built in.

terraform {
  required_version = ">= 1.5.0"
}

locals {
  spec          = jsondecode(file("${path.module}/dsm.json"))
  inputs_sha256 = filesha256("${path.module}/dsm.json")
  rendered_dir  = abspath("${path.module}/../../rendered/${local.spec.environment}")

  # every host: name → private address (not secret, so it can drive for_each)
  hosts = merge(
    local.spec.trackers.hosts,
    local.spec.idServers.hosts,
    merge([for name, g in local.spec.storageGroups : g.hosts]...),
    local.spec.gateways.hosts,
    local.spec.data.hosts,
  )

  user_data = module.cluster.user_data
}

module "cluster" {
  source        = "../../modules/cluster"
  spec          = local.spec
  rendered_dir  = local.rendered_dir
  inputs_sha256 = local.inputs_sha256
  secrets       = var.secrets
}

resource "terraform_data" "host" {
  for_each = local.hosts

  # new user data (dsm.json or secrets changed) → provision the host again
  triggers_replace = [sha256(local.user_data[each.key])]

  connection {
    type         = "ssh"
    host         = lookup(var.ssh_addresses, each.key, each.value)
    user         = var.ssh_user
    private_key  = file(var.ssh_private_key_file)
    bastion_host = var.bastion_host == "" ? null : var.bastion_host
  }

  provisioner "file" {
    content     = local.user_data[each.key]
    destination = "/tmp/dsm-user-data"
  }

  provisioner "remote-exec" {
    inline = [
      "set -e",
      "sudo mkdir -p /var/lib/cloud/seed/nocloud",
      "sudo install -m 0600 /tmp/dsm-user-data /var/lib/cloud/seed/nocloud/user-data",
      "rm -f /tmp/dsm-user-data",
      "printf 'instance-id: dsm-${each.key}-%s\\nlocal-hostname: ${each.key}\\n' \"$(date +%s)\" | sudo tee /var/lib/cloud/seed/nocloud/meta-data >/dev/null",
      "sudo cloud-init clean --logs",
      "sudo cloud-init init --local",
      "sudo cloud-init init",
      "sudo cloud-init modules --mode=config",
      "sudo cloud-init modules --mode=final",
    ]
  }
}
