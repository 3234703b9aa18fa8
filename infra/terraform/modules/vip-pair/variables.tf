variable "role" {
  description = "Which pair: `tracker` (the `trackers` section of dsm.json and of the rendered manifest) or `id` (`idServers`)."
  type        = string

  validation {
    condition     = contains(["tracker", "id"], var.role)
    error_message = "role must be \"tracker\" or \"id\"."
  }
}

variable "hosts" {
  description = "Hosts of the pair: name → private IPv4 address. The same map as `trackers.hosts` / `idServers.hosts` in dsm.json (the plan checks it)."
  type        = map(string)

  validation {
    condition     = length(var.hosts) >= 2 && alltrue([for a in values(var.hosts) : can(cidrhost("${a}/32", 0))])
    error_message = "A VIP pair needs at least two hosts, each with an IPv4 address."
  }
}

variable "vip" {
  description = "The virtual IP of the pair with its prefix length (`10.0.1.100/32`), as `trackers.vip` / `idServers.vip` in dsm.json."
  type        = string

  validation {
    condition     = can(cidrhost(var.vip, 0))
    error_message = "The VIP must be address/prefix, e.g. 10.0.1.100/32."
  }
}

variable "port" {
  description = "Port the nodes listen on (and the VIP serves); null = the role's usual port, 21000 for trackers, 22000 for id servers."
  type        = number
  default     = null
}

variable "rendered_dir" {
  description = "Folder of this environment's rendered provisioning, `infra/terraform/rendered/<env>` (written by `npm run render -w @dsm/terraform`)."
  type        = string
}

variable "inputs_sha256" {
  description = "SHA-256 of the environment's dsm.json (`filesha256(\"dsm.json\")`): the plan stops when the rendered folder was made from other inputs."
  type        = string
}

variable "secrets" {
  description = "Values of the `{{secret:NAME}}` marks in dsm.json, by NAME; filled into the user data at apply time (never written to the rendered folder)."
  type        = map(string)
  default     = {}
  sensitive   = true
}
