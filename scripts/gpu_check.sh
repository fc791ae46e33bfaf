#!/usr/bin/env bash
# One prepared check for a lent GPU (or any CUDA box); about 8 minutes on one H200.
#
#   scripts/gpu_check.sh                  # from the repository root; results under $OUT
#
# 1. The box: nvidia-smi, Python, JAX and its devices. Nothing is installed except carried wheels:
#    every wheels/*.whl (or $GPU_CHECK_WHEELS/*.whl) is installed offline, without dependencies
#    (bring grain and open-clip-torch this way if the box lacks them).
# 2. Rollout throughput at Janus-Pro-1B shapes with random bf16 weights: 16 CFG images of 576
#    tokens, and 16 answers of 64 tokens after a 576-token image prompt; compile time, tokens/s
#    and MFU (analytic model FLOPs, pairuni_jax.flops, over the chip's peak).
# 3. The HPS reward: ViT-H-14 with random bf16 weights scoring 16 Janus-size images, images/s.
# 4. A few `pairuni train` steps of the 1B config with random weights on the bundled pairs
#    (tiny HPS model): seconds per step, sampled tokens/s and MFU.
# 5. The test suite on the GPU backend, in the time left; tests that build the 8-device test
#    mesh cannot run on one GPU and are counted apart.
#
# Writes $OUT/gpu_check_summary.txt (one "name: value" line per result) and the log of each part
# ($OUT defaults to ./gpu_check_out). Knobs: GPU_CHECK_BUDGET_S (total seconds, 480),
# GPU_CHECK_PLATFORM (cuda), GPU_CHECK_PRESET and GPU_CHECK_CONFIG (janus_pro_1b and
# configs/janus_pro_1b.yaml; "tiny" and configs/tiny.yaml make a quick dry run on CPU).
set -uo pipefail

cd "$(dirname "$0")/.."
export OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
SUMMARY="$OUT/gpu_check_summary.txt"
: >"$SUMMARY"
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-480}
START=$(date +%s)
export JAX_PLATFORMS=${GPU_CHECK_PLATFORM:-cuda}
export GPU_CHECK_PRESET=${GPU_CHECK_PRESET:-janus_pro_1b}
CONFIG=${GPU_CHECK_CONFIG:-configs/janus_pro_1b.yaml}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

note() { echo "$1: $2" | tee -a "$SUMMARY"; }
left() { echo $((BUDGET - ($(date +%s) - START))); }
# Runs "$@" with a timeout of min($1, seconds left - 10); logs to $OUT/<name>.log.
stage() {
    local name=$1 cap=$2
    shift 2
    local limit
    limit=$(($(left) - 10))
    ((limit > cap)) && limit=$cap
    if ((limit < 20)); then
        note "$name" "skipped (out of time)"
        return 1
    fi
    local t0=$SECONDS
    timeout --signal=TERM --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    note "$name.seconds" "$((SECONDS - t0)) (limit $limit, exit $rc)"
    return $rc
}

# -- 1. the box ---------------------------------------------------------------------------------
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$OUT/box.log" 2>&1 \
    && note gpu "$(head -1 "$OUT/box.log")" || note gpu "nvidia-smi unavailable"
WHEELS=${GPU_CHECK_WHEELS:-wheels}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    $PY -m pip install --no-index --no-deps --quiet "$WHEELS"/*.whl >>"$OUT/box.log" 2>&1
    note wheels "installed $(ls "$WHEELS"/*.whl | wc -l) from $WHEELS (exit $?)"
fi
$PY - >>"$SUMMARY" 2>>"$OUT/box.log" <<'PY'
import importlib, sys
print(f"python: {sys.version.split()[0]}")
for name in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "grain", "transformers",
             "torch", "open_clip"):
    try:
        print(f"{name}: {getattr(importlib.import_module(name), '__version__', '?')}")
    except ImportError as e:
        print(f"{name}: MISSING ({e})")
import jax
print(f"jax.devices: {jax.devices()}")
PY

# -- 2, 3. rollout and reward throughput ---------------------------------------------------------
stage bench 200 $PY - <<'PY'
import os, time
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from pairuni_jax import flops
from pairuni_jax.models.clip import CLIP, CLIPConfig
from pairuni_jax.models.janus import Janus, JanusConfig
from pairuni_jax.models.random_init import random_module
from pairuni_jax.rewards.hps import hps_score
from pairuni_jax.rollout.image import ImageSettings, sample_images_jit
from pairuni_jax.rollout.text import TextSettings, sample_text_jit

summary = open(os.path.join(os.environ.get("OUT", "gpu_check_out"), "gpu_check_summary.txt"), "a")
def note(name, value):
    print(f"{name}: {value}", flush=True)
    summary.write(f"{name}: {value}\n"); summary.flush()

preset = os.environ["GPU_CHECK_PRESET"]
config = JanusConfig.preset(preset)
device = jax.devices()[0]
chip = flops.chip_for_device_kind(device.device_kind)
note("device", f"{device.device_kind} (peak {chip.peak_flops / 1e12:.0f} TFLOP/s bf16)"
     if chip else device.device_kind)
dtype = jnp.bfloat16 if device.platform != "cpu" else jnp.float32

def timed(run, repeats=3):
    """(first call incl. compile, best of ``repeats`` later calls) in seconds."""
    t = time.perf_counter(); jax.block_until_ready(run(0)); first = time.perf_counter() - t
    best = float("inf")
    for r in range(1, repeats + 1):
        t = time.perf_counter(); jax.block_until_ready(run(r)); best = min(best, time.perf_counter() - t)
    return first, best

def rate(name, flop, tokens, first, best, unit="tokens"):
    note(f"{name}.compile_s", f"{first - best:.1f}")
    note(f"{name}.step_s", f"{best:.3f}")
    note(f"{name}.{unit}_per_s", f"{tokens / best:.1f}")
    if chip:
        note(f"{name}.mfu", f"{flop / best / chip.peak_flops:.4f}")

t = time.perf_counter()
model = random_module(lambda: Janus(config, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)), 0)
note("bench.model_init_s", f"{time.perf_counter() - t:.1f}")
rows, gen_len, answer = 16, 32, 64
rng = np.random.default_rng(0)
vocab = config.text.vocab_size

ids = jnp.asarray(rng.integers(100, 1000, (rows, gen_len)), jnp.int32)
mask = jnp.ones((rows, gen_len), bool)
settings = ImageSettings(pad_id=0, cfg_weight=5.0)
shapes = flops.StepShapes(rows, 1, 1, 0, gen_len, answer, remat_full=False)
f = flops.step_flops(shapes, config, CLIPConfig.tiny())
first, best = timed(lambda k: sample_images_jit(model, ids, mask, jax.random.key(k), settings).tokens)
rate("rollout_images", f.image_prefill + f.image_decode, rows * config.num_generated_image_tokens,
     first, best)

p = config.num_image_tokens
und_len = p + 3 + 32
prompt = np.concatenate(
    [np.full((rows, 2), 100), np.full((rows, p), config.image_token_id), rng.integers(100, 1000, (rows, 33))],
    axis=1)
pixels = jnp.asarray(rng.uniform(-1, 1, (rows, config.vision.image_size, config.vision.image_size, 3)), dtype)
text = TextSettings(eos_id=vocab - 1, pad_id=0, max_new_tokens=answer)
shapes = flops.StepShapes(rows, 1, 1, und_len, gen_len, answer, remat_full=False)
f = flops.step_flops(shapes, config, CLIPConfig.tiny())
und_ids, und_mask = jnp.asarray(prompt, jnp.int32), jnp.ones((rows, und_len), bool)
first, best = timed(
    lambda k: sample_text_jit(model, und_ids, und_mask, pixels, None, jax.random.key(k), text).tokens)
rate("rollout_answers", f.answer_prefill + f.answer_decode, rows * answer, first, best)
del model

hps_config = CLIPConfig.vit_h_14() if preset != "tiny" else CLIPConfig.tiny()
t = time.perf_counter()
hps = random_module(lambda: CLIP(hps_config, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)), 1)
note("bench.hps_init_s", f"{time.perf_counter() - t:.1f}")
images = jnp.asarray(rng.uniform(-1, 1, (rows, config.vq.image_size, config.vq.image_size, 3)), dtype)
features = jnp.asarray(rng.normal(size=(rows, hps_config.embed_dim)), jnp.float32)
score = jax.jit(lambda m, x, t: hps_score(m, x, text_features=t))
first, best = timed(lambda k: score(hps, images + 1e-3 * k, features))
rate("hps_reward", flops.clip_image(hps_config, rows), rows, first, best, unit="images")
PY

# -- 4. train steps ------------------------------------------------------------------------------
RUN=${TMPDIR:-/tmp}/pairuni_gpu_check_run
rm -rf "$RUN"
EXTRA=()
[[ "$CONFIG" != configs/tiny.yaml ]] && EXTRA=(--config configs/mesh/single_gpu.yaml
    model.path=null "model.preset=$GPU_CHECK_PRESET" reward.path=null data.pairs_per_host=2)
stage train 240 $PY -m pairuni_jax.cli train --config "$CONFIG" "${EXTRA[@]}" "run_dir=$RUN" \
    data.path=pairuni_jax/assets/demo_pairs/pairs.jsonl data.num_workers=0 steps=4 \
    optimizer.total_steps=4 checkpoint.every=1000 checkpoint.async_save=false \
    logging.samples_every=0 logging.tensorboard=false
RUN="$RUN" $PY - >>"$SUMMARY" 2>>"$OUT/train.log" <<'PY'
import json, os
from pathlib import Path
import jax
from pairuni_jax import flops
from pairuni_jax.models.clip import CLIPConfig
from pairuni_jax.models.janus import JanusConfig
from pairuni_jax.run_config import load_run_config

run = Path(os.environ["RUN"])
metrics = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
config = load_run_config([run / "config.yaml"])
model = JanusConfig.preset(config.model.preset)
shapes = flops.StepShapes.from_run_config(config, config.data.pairs_per_host)
step = flops.step_flops(shapes, model, CLIPConfig.tiny())
tokens = flops.step_tokens(shapes, model)
chip = flops.chip_for_device_kind(jax.devices()[0].device_kind)
print(f"train.first_step_s (compile included): {metrics[0]['step_seconds']:.1f}")
later = metrics[1:] or metrics
seconds = sorted(m["step_seconds"] for m in later)[len(later) // 2]
print(f"train.step_s (median after the first): {seconds:.3f}")
perf = flops.perf_metrics(step, tokens, seconds, 1, chip.peak_flops if chip else None)
for key, value in perf.items():
    print(f"train.{key.removeprefix('perf/')}: {value:.4f}")
print(f"train.und_reward_mean (last): {metrics[-1].get('und/reward_mean')}")
PY

# -- 5. the test suite ---------------------------------------------------------------------------
export XLA_PYTHON_CLIENT_PREALLOCATE=false # several test workers share the GPU
stage tests 600 $PY -m pytest tests -q -rfE -p no:cacheprovider -n 4 --dist loadfile
TESTS="$OUT/tests.log"
if [[ -f "$TESTS" ]]; then
    # The progress lines survive a kill at the deadline; the final tally only a full run.
    progress=$(grep -E '^[.FEsxX]+ *(\[ *[0-9]+%\])?$' "$TESTS" | tr -cd '.FEsxX')
    note tests.progress "$(tr -cd . <<<"$progress" | wc -c) passed, $(tr -cd F <<<"$progress" \
        | wc -c) failed, $(tr -cd E <<<"$progress" | wc -c) errors so far"
    note tests.result "$(grep -E '[0-9]+ (passed|failed)' "$TESTS" | tail -1)"
    note tests.need_8_devices "$(grep -cE '^(FAILED|ERROR).*devices, 1 available' "$TESTS")"
    grep -E '^(FAILED|ERROR)' "$TESTS" | grep -v 'devices, 1 available' | head -20 \
        | sed 's/^/tests.other_failure: /' >>"$SUMMARY"
fi
note total_seconds "$(($(date +%s) - START))"
