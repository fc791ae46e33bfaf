#!/usr/bin/env bash
# Install pairuni-jax on every worker of a TPU VM / slice (run from your machine, in the repo).
#   scripts/tpu/setup.sh NAME ZONE
set -euo pipefail
name=${1:?name}; zone=${2:?zone}
gcloud compute tpus tpu-vm scp --recurse --zone "$zone" --worker=all \
  "$(git rev-parse --show-toplevel)" "$name":~/pairuni-jax
gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command \
  'cd ~/pairuni-jax && python3 -m venv ~/venv && ~/venv/bin/pip install -q -e ".[tpu]"'
