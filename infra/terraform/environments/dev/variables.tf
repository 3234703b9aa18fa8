variable "secrets" {
  description = "Values of the `{{secret:NAME}}` marks in dsm.json (dev: mysql_password, cluster_key — the node-protocol key every node and gateway proves, written to /etc/dsm/cluster.key, at least 32 characters — and gateway_hs256_k1 — the gateway's HS256 token key, at least 32 characters). Letters, digits and . _ ~ - only, 16-128 characters (they go into URLs, JSON and YAML unescaped)."
  type        = map(string)
  sensitive   = true

  validation {
    condition     = alltrue([for v in values(var.secrets) : can(regex("^[A-Za-z0-9._~-]{16,128}$", v))])
    error_message = "Each secret is 16-128 of [A-Za-z0-9._~-]."
  }
}

variable "ssh_user" {
  description = "SSH user on every host (needs passwordless sudo)."
  type        = string
  default     = "root"
}

variable "ssh_private_key_file" {
  description = "Path of the SSH private key for the hosts."
  type        = string
}

variable "ssh_addresses" {
  description = "Where to SSH to, per host name, when not its private address from dsm.json (e.g. public addresses)."
  type        = map(string)
  default     = {}
}

variable "bastion_host" {
  description = "SSH jump host in front of the private addresses (empty: connect directly)."
  type        = string
  default     = ""
}
