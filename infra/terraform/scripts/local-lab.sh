#!/usr/bin/env bash
# The local environment's lab: up | down | status | check (see infra/terraform/src/local-lab.ts).
# Terraform (environments/local) runs `up` on apply and `down` on destroy.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
exec node --import tsx src/local-lab.ts "$@"
