variable "spec" {
  description = "The environment's dsm.json, decoded (`jsondecode(file(\"dsm.json\"))`): its trackers, idServers, storageGroups and, when present, gateways and data sections."
  type        = any
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
