# The local environment: the namespace lab of the HA tests (hosts dsm-<name> on 10.213.0.0/24 of
# one machine, @dsm/ha/lab). No provider: the modules check and describe the rendered
# provisioning, and scripts/local-lab.sh starts the lab from the same rendered inputs.

terraform {
  required_version = ">= 1.5.0"
}

locals {
  spec          = jsondecode(file("${path.module}/dsm.json"))
  inputs_sha256 = filesha256("${path.module}/dsm.json")
  rendered_dir  = abspath("${path.module}/../../rendered/${local.spec.environment}")
}

module "cluster" {
  source        = "../../modules/cluster"
  spec          = local.spec
  rendered_dir  = local.rendered_dir
  inputs_sha256 = local.inputs_sha256
}

# The lab itself: `up` when created, `down` when destroyed. The script checks the rendered
# folder against the lab before it starts anything (see scripts/local-lab.sh).
resource "terraform_data" "lab" {
  count = var.start_lab ? 1 : 0

  triggers_replace = [local.inputs_sha256]
  input = {
    script       = abspath("${path.module}/../../scripts/local-lab.sh")
    rendered_dir = local.rendered_dir
  }

  provisioner "local-exec" {
    command = "${self.input.script} up"
    environment = {
      DSM_RENDERED_DIR      = self.input.rendered_dir
      DSM_TRACKER_ENDPOINT  = module.cluster.tracker_endpoint
      DSM_ID_ENDPOINT       = module.cluster.id_endpoint
      DSM_STORAGE_ADDRESSES = join(",", flatten([for g in module.cluster.storage_groups : g.storage_addresses]))
      DSM_MOUNT_POINTS      = join(",", [for g in module.cluster.storage_groups : g.mount_point])
    }
  }

  provisioner "local-exec" {
    when    = destroy
    command = "${self.input.script} down"
  }

  # the modules' checks (rendered folder current, hosts as in dsm.json) run before the lab starts
  depends_on = [module.cluster]
}
