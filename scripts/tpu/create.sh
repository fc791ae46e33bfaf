#!/usr/bin/env bash
# Create a Cloud TPU VM or pod slice for pairuni-jax.
#   scripts/tpu/create.sh NAME ZONE ACCELERATOR [RUNTIME]
#   scripts/tpu/create.sh pairuni-7b us-east5-a v5p-16
# RUNTIME defaults to the current TPU Ubuntu base image for the accelerator family.
set -euo pipefail
name=${1:?name}; zone=${2:?zone}; accel=${3:?accelerator, e.g. v5p-16}
case "$accel" in
  v4-*) runtime=${4:-tpu-ubuntu2204-base} ;;
  v5litepod-*|v5e-*) runtime=${4:-v2-alpha-tpuv5-lite} ;;
  v5p-*) runtime=${4:-v2-alpha-tpuv5} ;;
  v6e-*) runtime=${4:-v2-alpha-tpuv6e} ;;
  *) runtime=${4:?runtime version for $accel} ;;
esac
gcloud compute tpus tpu-vm create "$name" --zone "$zone" \
  --accelerator-type "${accel/v5e-/v5litepod-}" --version "$runtime"
