variable "hosts" {
  description = "The data VM: name → private IPv4 address (`data.hosts` in dsm.json), running MariaDB and Redis. Empty map: managed services, nothing to provision."
  type        = map(string)
  default     = {}

  validation {
    condition     = length(var.hosts) <= 1 && alltrue([for a in values(var.hosts) : can(cidrhost("${a}/32", 0))])
    error_message = "At most one data host, with an IPv4 address."
  }
}

variable "managed_mysql_address" {
  description = "With no data host: `host:port` of a managed MySQL the node configs in dsm.json point to (only echoed in the outputs)."
  type        = string
  default     = ""
}

variable "managed_redis_address" {
  description = "With no data host: `host:port` of a managed Redis the node configs in dsm.json point to (only echoed in the outputs)."
  type        = string
  default     = ""
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
