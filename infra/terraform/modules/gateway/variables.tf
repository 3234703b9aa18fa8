variable "hosts" {
  description = "Gateway hosts: name → private IPv4 address (`gateways.hosts` in dsm.json). The environment puts them behind a load balancer."
  type        = map(string)

  validation {
    condition     = length(var.hosts) >= 1 && alltrue([for a in values(var.hosts) : can(cidrhost("${a}/32", 0))])
    error_message = "At least one gateway host, each with an IPv4 address."
  }
}

variable "port" {
  description = "Port the gateways listen on (HTTP)."
  type        = number
  default     = 8080
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
