variable "name" {
  description = "Name of the storage group, also its GlusterFS volume (a key of `storageGroups` in dsm.json)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9]{1,16}$", var.name))
    error_message = "Group names are 1-16 of [A-Za-z0-9]."
  }
}

variable "hosts" {
  description = "The group's three hosts: name → private IPv4 address (replica 3, or replica 2 + arbiter on the third). The same map as `storageGroups.<name>.hosts` in dsm.json."
  type        = map(string)

  validation {
    condition     = length(var.hosts) == 3 && alltrue([for a in values(var.hosts) : can(cidrhost("${a}/32", 0))])
    error_message = "A storage group has exactly three hosts, each with an IPv4 address."
  }
}

variable "port" {
  description = "Port of the storage nodes."
  type        = number
  default     = 23000
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
