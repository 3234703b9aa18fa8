variable "hcloud_token" {
  description = "Hetzner Cloud API token of the project (read/write) Terraform uses."
  type        = string
  sensitive   = true
}

variable "secrets" {
  description = "Values of the `{{secret:NAME}}` marks in dsm.json: mysql_password, join_secret, cluster_key (the node-protocol key every node and gateway proves, written to /etc/dsm/cluster.key; at least 32 characters), gateway_hs256_k1 (the gateway's HS256 token key k1, at least 32 characters; add gateway_hs256_k2 when rotating) and hcloud_vip_token (an API token the pair hosts use to move their VIP). Letters, digits and . _ ~ - only, 16-128 characters."
  type        = map(string)
  sensitive   = true

  validation {
    condition     = alltrue([for v in values(var.secrets) : can(regex("^[A-Za-z0-9._~-]{16,128}$", v))])
    error_message = "Each secret is 16-128 of [A-Za-z0-9._~-]."
  }
}

variable "location" {
  description = "Hetzner location of every VM, volume and the load balancer (fsn1, nbg1, hel1, …)."
  type        = string
  default     = "fsn1"
}

variable "network_zone" {
  description = "Network zone of the private subnet (must contain location)."
  type        = string
  default     = "eu-central"
}

variable "network_cidr" {
  description = "IP range of the private network."
  type        = string
  default     = "10.0.0.0/16"
}

variable "subnet_cidr" {
  description = "The subnet every host address (and VIP) of dsm.json lies in."
  type        = string
  default     = "10.0.1.0/24"
}

variable "image" {
  description = "OS image of every VM (Debian 12: keepalived, glusterfs-server, mariadb-server, redis-server and hcloud-cli come from its packages)."
  type        = string
  default     = "debian-12"
}

variable "server_types" {
  description = "Server type per role (tracker, id, storage, gateway, data)."
  type        = map(string)
  default = {
    tracker = "cx22"
    id      = "cx22"
    storage = "cx32"
    gateway = "cx32"
    data    = "cx42"
  }

  validation {
    condition     = alltrue([for r in ["tracker", "id", "storage", "gateway", "data"] : contains(keys(var.server_types), r)])
    error_message = "server_types needs tracker, id, storage, gateway and data."
  }
}

variable "ssh_public_keys" {
  description = "Admin SSH public keys, by name, put on every VM."
  type        = map(string)
}

variable "admin_cidrs" {
  description = "Addresses allowed to SSH to the VMs' public interfaces."
  type        = list(string)
}

variable "load_balancer_type" {
  description = "Hetzner load balancer type in front of the gateways."
  type        = string
  default     = "lb11"
}

variable "domain" {
  description = "DNS name of the gateway (its A record must point at the load balancer): HTTPS with a managed certificate. Empty: plain HTTP on port 80."
  type        = string
  default     = ""
}

variable "protect_bricks" {
  description = "Delete protection on the brick volumes (turn off only to tear the environment down)."
  type        = bool
  default     = true
}

variable "worker_gateway" {
  description = "The gateway as a Cloudflare Worker beside the VM gateways (modules/worker): `enabled`, `account_id`, `zone_id`, `routes` (e.g. [\"media.example.com/*\"]), `bundle_file` (gateway/dist/worker.js from `wrangler deploy --dry-run --outdir dist`), and optionally `public_url`, `migrations_applied`, `sweep_crons`, `log_level`, `config` (extra gateway.json keys). Off by default: read the README first (the nodes must be reachable from Cloudflare)."
  type = object({
    enabled            = bool
    account_id         = optional(string, "")
    zone_id            = optional(string, "")
    routes             = optional(list(string), [])
    bundle_file        = optional(string, "")
    public_url         = optional(string, "")
    migrations_applied = optional(string, "")
    sweep_crons        = optional(list(string), [])
    log_level          = optional(string, "warn")
    config             = optional(any, {})
  })
  default = { enabled = false }

  validation {
    condition     = !var.worker_gateway.enabled || (var.worker_gateway.account_id != "" && var.worker_gateway.zone_id != "" && length(var.worker_gateway.routes) > 0 && var.worker_gateway.bundle_file != "")
    error_message = "worker_gateway.enabled needs account_id, zone_id, routes and bundle_file."
  }
}

variable "cloudflare_api_token" {
  description = "Cloudflare API token Terraform uses for the Worker (Workers Scripts: Edit on the account, Workers Routes: Edit on the zone). Only needed with worker_gateway.enabled (or set CLOUDFLARE_API_TOKEN)."
  type        = string
  default     = null
  sensitive   = true
}
