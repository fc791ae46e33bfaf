#!/usr/bin/env bash
# Launch the same training command on every worker of the slice (one global mesh; the TPU runtime
# provides the coordinator, so `jax.distributed.initialize()` needs no arguments).
#   scripts/tpu/launch.sh NAME ZONE -- --config configs/janus_pro_7b.yaml --config configs/mesh/v5p-16.yaml data.path=...
set -euo pipefail
name=${1:?name}; zone=${2:?zone}; shift 2
[ "${1:-}" = "--" ] && shift
args=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command \
  "cd ~/pairuni-jax && nohup ~/venv/bin/pairuni train $args distributed=true > train.log 2>&1 &"
