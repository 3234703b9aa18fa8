variable "start_lab" {
  description = "Start the namespace lab on apply (needs root, GlusterFS, keepalived and iproute2: infra/ha/scripts/ensure-deps.sh). false: only check and describe the rendered provisioning."
  type        = bool
  default     = true
}
