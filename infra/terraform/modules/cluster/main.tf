# Every role of one dsm.json, wired the same way in every environment: the tracker and id-server
# VIP pairs, the storage groups, the gateways and the data host (the last two only when dsm.json
# has them). Provider-neutral like the modules it calls: it creates no VM and hands each host's
# user data to the environment, which puts it on a cloud VM or an existing machine.

locals {
  has_gateways = can(var.spec.gateways.hosts)
  has_data     = can(var.spec.data.hosts)
}

module "vip_pair" {
  # the tracker pair and the id-server pair: one module, the role picks the manifest section
  source = "../vip-pair"
  for_each = {
    tracker = var.spec.trackers
    id      = var.spec.idServers
  }

  role          = each.key
  hosts         = each.value.hosts
  vip           = each.value.vip
  port          = each.value.port
  rendered_dir  = var.rendered_dir
  inputs_sha256 = var.inputs_sha256
  secrets       = var.secrets
}

module "storage_group" {
  source   = "../storage-group"
  for_each = var.spec.storageGroups

  name          = each.key
  hosts         = each.value.hosts
  port          = each.value.port
  rendered_dir  = var.rendered_dir
  inputs_sha256 = var.inputs_sha256
  secrets       = var.secrets
}

module "gateways" {
  source = "../gateway"
  count  = local.has_gateways ? 1 : 0

  hosts         = try(var.spec.gateways.hosts, {})
  port          = try(var.spec.gateways.port, null)
  rendered_dir  = var.rendered_dir
  inputs_sha256 = var.inputs_sha256
  secrets       = var.secrets
}

module "data" {
  source = "../data"
  count  = local.has_data ? 1 : 0

  hosts         = try(var.spec.data.hosts, {})
  rendered_dir  = var.rendered_dir
  inputs_sha256 = var.inputs_sha256
  secrets       = var.secrets
}
