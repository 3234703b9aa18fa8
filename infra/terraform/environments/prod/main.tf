# The production environment on Hetzner Cloud: one private network, a VM per host of dsm.json
# (its private address fixed from there), a brick volume per storage host, a firewall, and a
# load balancer in front of the gateways. What runs on each VM is the rendered user data the
# modules hand over (provisioning is provider-neutral; only this file knows Hetzner).

terraform {
  required_version = ">= 1.5.0"
  required_providers {
    hcloud = {
      source  = "hetznercloud/hcloud"
      version = "~> 1.49"
    }
    cloudflare = {
      source  = "cloudflare/cloudflare"
      version = "~> 5.5"
    }
  }
}

provider "hcloud" {
  token = var.hcloud_token
}

provider "cloudflare" {
  # null: the provider reads CLOUDFLARE_API_TOKEN (used only when worker_gateway.enabled)
  api_token = var.cloudflare_api_token
}

locals {
  spec          = jsondecode(file("${path.module}/dsm.json"))
  env           = local.spec.environment
  inputs_sha256 = filesha256("${path.module}/dsm.json")
  rendered_dir  = abspath("${path.module}/../../rendered/${local.env}")

  # every host: name → { address, role, group } (not secret, so it can drive for_each)
  hosts = merge(
    { for h, a in local.spec.trackers.hosts : h => { address = a, role = "tracker", group = "" } },
    { for h, a in local.spec.idServers.hosts : h => { address = a, role = "id", group = "" } },
    merge([
      for g, s in local.spec.storageGroups : { for h, a in s.hosts : h => { address = a, role = "storage", group = g } }
    ]...),
    { for h, a in local.spec.gateways.hosts : h => { address = a, role = "gateway", group = "" } },
    { for h, a in local.spec.data.hosts : h => { address = a, role = "data", group = "" } },
  )
  storage_hosts = { for h, v in local.hosts : h => v if v.role == "storage" }

  user_data = module.cluster.user_data

  # The Worker's auth keys are the VM gateways' own: each `{{secret:NAME}}` of
  # gateways.config.auth.hs256Keys in dsm.json, filled from var.secrets.
  gateway_auth = try(local.spec.gateways.config.auth, {})
  worker_hs256_keys = {
    for kid, mark in try(local.gateway_auth.hs256Keys, {}) :
    kid => var.secrets[regex("^\\{\\{secret:([a-z][a-z0-9_]{0,63})\\}\\}$", mark)[0]]
  }
}

# ---- what runs where (provider-neutral modules) ------------------------------------------------

module "cluster" {
  source        = "../../modules/cluster"
  spec          = local.spec
  rendered_dir  = local.rendered_dir
  inputs_sha256 = local.inputs_sha256
  secrets       = var.secrets
}

# ---- Hetzner Cloud -----------------------------------------------------------------------------

resource "hcloud_network" "dsm" {
  # the vip-sync hook of dsm.json (vipSync.network) names this network
  name     = "dsm-${local.env}"
  ip_range = var.network_cidr
}

resource "hcloud_network_subnet" "hosts" {
  network_id   = hcloud_network.dsm.id
  type         = "cloud"
  network_zone = var.network_zone
  ip_range     = var.subnet_cidr

  lifecycle {
    precondition {
      condition = alltrue([
        for h, v in local.hosts : cidrhost("${v.address}/${split("/", var.subnet_cidr)[1]}", 0) == split("/", var.subnet_cidr)[0]
      ])
      error_message = "Every host address in dsm.json must be inside subnet_cidr."
    }
  }
}

resource "hcloud_ssh_key" "admin" {
  for_each   = var.ssh_public_keys
  name       = "${local.env}-${each.key}"
  public_key = each.value
}

resource "hcloud_placement_group" "role" {
  # members of a pair or a group never share a physical host
  for_each = toset(distinct([for v in values(local.hosts) : v.role]))
  name     = "${local.env}-${each.key}"
  type     = "spread"
}

resource "hcloud_firewall" "hosts" {
  # public interfaces: SSH from the admins only. Hetzner firewalls do not filter the private
  # network; there the nodes' joinSecret/allowFrom and MySQL's host pattern apply.
  name = "${local.env}-hosts"

  rule {
    description = "ssh from admins"
    direction   = "in"
    protocol    = "tcp"
    port        = "22"
    source_ips  = var.admin_cidrs
  }

  rule {
    description = "ping"
    direction   = "in"
    protocol    = "icmp"
    source_ips  = ["0.0.0.0/0", "::/0"]
  }
}

resource "hcloud_server" "host" {
  for_each = local.hosts

  name               = "${local.env}-${each.key}"
  server_type        = var.server_types[each.value.role]
  image              = var.image
  location           = var.location
  ssh_keys           = [for k in hcloud_ssh_key.admin : k.id]
  firewall_ids       = [hcloud_firewall.hosts.id]
  placement_group_id = hcloud_placement_group.role[each.value.role].id
  user_data          = local.user_data[each.key]
  labels = {
    environment = local.env
    role        = each.value.role
  }

  public_net {
    ipv4_enabled = true
    ipv6_enabled = true
  }

  # attached at creation, so cloud-init already sees the private interface
  network {
    network_id = hcloud_network.dsm.id
    ip         = each.value.address
    alias_ips  = []
  }

  lifecycle {
    # A changed dsm.json does not replace running VMs (a storage VM holds its group's gluster
    # state): roll changes out host by host with `terraform apply -replace=...` (README).
    # dsm-vip-sync moves the VIPs (alias IPs) to whichever host keepalived made MASTER.
    ignore_changes = [user_data, ssh_keys, image, network]
  }

  depends_on = [hcloud_network_subnet.hosts]
}

resource "hcloud_volume" "brick" {
  for_each = { for h, v in local.storage_hosts : h => v if module.cluster.storage_groups[v.group].brick_size_gb > 0 }

  name              = "${local.env}-${each.key}-brick"
  size              = module.cluster.storage_groups[each.value.group].brick_size_gb
  server_id         = hcloud_server.host[each.key].id
  automount         = false
  delete_protection = var.protect_bricks
}

resource "hcloud_load_balancer" "gateway" {
  name               = "${local.env}-gateway"
  load_balancer_type = var.load_balancer_type
  location           = var.location

  algorithm {
    type = "least_connections"
  }
}

resource "hcloud_load_balancer_network" "gateway" {
  load_balancer_id = hcloud_load_balancer.gateway.id
  subnet_id        = hcloud_network_subnet.hosts.id
}

resource "hcloud_load_balancer_target" "gateway" {
  for_each = local.spec.gateways.hosts

  type             = "server"
  load_balancer_id = hcloud_load_balancer.gateway.id
  server_id        = hcloud_server.host[each.key].id
  use_private_ip   = true

  depends_on = [hcloud_load_balancer_network.gateway]
}

resource "hcloud_managed_certificate" "gateway" {
  count        = var.domain == "" ? 0 : 1
  name         = "${local.env}-gateway"
  domain_names = [var.domain]
}

resource "hcloud_load_balancer_service" "gateway" {
  load_balancer_id = hcloud_load_balancer.gateway.id
  protocol         = var.domain == "" ? "http" : "https"
  listen_port      = var.domain == "" ? 80 : 443
  destination_port = module.cluster.gateways.port

  dynamic "http" {
    for_each = var.domain == "" ? [] : [1]
    content {
      certificates  = [hcloud_managed_certificate.gateway[0].id]
      redirect_http = true
    }
  }

  health_check {
    protocol = "http"
    port     = module.cluster.gateways.port
    interval = 5
    timeout  = 3
    retries  = 2
    http {
      path         = module.cluster.gateways.health_path
      status_codes = ["200"]
    }
  }
}

# ---- Cloudflare Worker (optional, beside the VM gateways) -------------------------------------

module "worker_gateway" {
  source = "../../modules/worker"
  count  = var.worker_gateway.enabled ? 1 : 0

  account_id  = var.worker_gateway.account_id
  zone_id     = var.worker_gateway.zone_id
  routes      = var.worker_gateway.routes
  bundle_file = var.worker_gateway.bundle_file
  public_url  = var.worker_gateway.public_url
  log_level   = var.worker_gateway.log_level
  sweep_crons = var.worker_gateway.sweep_crons

  migrations_applied = var.worker_gateway.migrations_applied

  # Workers reach only public addresses: every tracker VM's public IPv4 at the tracker port
  trackers = [
    for h in sort(keys(module.cluster.trackers.hosts)) : "${hcloud_server.host[h].ipv4_address}:${module.cluster.trackers.port}"
  ]

  # the VM gateways' auth settings (issuer, audience, key id) without their keys, plus worker extras
  gateway_config = merge(
    {
      maxUploadBytes     = 5368709120
      statCacheMs        = 2000
      locateCacheMs      = 2000
      invalidationPollMs = 1000
      edgeCache = {
        enabled     = true
        sliceBytes  = 2097152
        statTtlMs   = 60000
        memoryBytes = 16777216
      }
      auth = { for k, v in local.gateway_auth : k => v if k != "hs256Keys" }
    },
    var.worker_gateway.config,
  )
  auth_hs256_keys = local.worker_hs256_keys
  cluster_key     = var.secrets["cluster_key"]
}

check "worker_gateway_reachability" {
  # A warning, not an error: the Worker is deployed, but this environment does not yet let it
  # reach the nodes (README, "The Cloudflare Worker"): the firewall admits SSH only, the trackers'
  # allowFrom is the private subnet, and the trackers hand out the storages' private addresses.
  assert {
    condition     = !var.worker_gateway.enabled
    error_message = "worker_gateway is enabled, but the prod nodes are not reachable from Cloudflare yet: open the tracker and storage ports to Cloudflare's ranges, widen the trackers' allowFrom and give the storages public addresses (environments/prod/README.md, \"The Cloudflare Worker\")."
  }
}
