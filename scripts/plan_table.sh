#!/usr/bin/env bash
# README's plan table from the TPU compiler (needs `pip install -e '.[tpu]'`): one `pairuni plan`
# per row, its JSON kept in OUT (default plans/); rows with a JSON already are skipped, so the
# script resumes. One compile at a time: a 7B step takes ~27 min and ~17 GB of host memory on
# 2 CPU cores, a 1B step ~10 min. Then: python scripts/plan_table.py OUT
set -euo pipefail
out=${1:-plans}
mkdir -p "$out"
row() {  # model slice suffix [overrides...]
  local model=$1 slice=$2 suffix=$3; shift 3
  local name=${model}_${slice}${suffix}
  [ -s "$out/$name.json" ] && return
  echo "$(date +%T) $name"
  # exit 1 is "does not fit" (the plan and its JSON are still written)
  pairuni plan --config "configs/janus_pro_${model}.yaml" --config "configs/mesh/${slice}.yaml" \
    --topology "$slice" --json "$out/$name.json" "$@" > "$out/$name.txt" 2> "$out/$name.err" || [ $? -eq 1 ]
}
row 7b v5e-16 ""
row 7b v5e-16 _lora model.lora.rank=16
row 7b v5p-8 ""
row 7b v5p-8 _train grpo.rollout.layout=train
row 7b v5e-8 _lora model.lora.rank=16
row 7b v4-8 _lora model.lora.rank=16
row 7b v5e-8 _lora_p4 model.lora.rank=16 data.pairs_per_host=4
row 7b v4-8 _lora_replicated model.lora.rank=16 grpo.rollout.layout=replicated
row 7b v5e-64 ""
row 7b v5e-64 _train grpo.rollout.layout=train
row 7b v4-8 ""
row 7b v5p-16 ""
row 7b v6e-8 ""
for slice in v5p-8 v6e-8 v5e-16 v4-8 v5p-16 v5e-64; do row 1b "$slice" ""; done
