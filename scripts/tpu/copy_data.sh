#!/usr/bin/env bash
# Copy converted models and pair data to every worker (each host reads its own shard of the pairs
# and only the parameter slices its chips hold, but every host needs the files).
#   scripts/tpu/copy_data.sh NAME ZONE LOCAL_DIR [REMOTE_DIR]
# For large models prefer a GCS bucket mounted on the workers (gcsfuse) over scp.
set -euo pipefail
name=${1:?name}; zone=${2:?zone}; src=${3:?local directory}; dst=${4:-~/}
gcloud compute tpus tpu-vm scp --recurse --zone "$zone" --worker=all "$src" "$name":"$dst"
