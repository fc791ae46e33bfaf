"""Compile time, step time, samples/s and compiled memory of the Pair-GRPO train step.

    python scripts/bench_train_step.py [--config tiny|small] [--steps 5] [--pairs 2] [--k 4]

"small": an LLM of width 512 × 8 layers with the real 102,400-token vocabulary and 16,384-code
image codebook, a 4-layer vision tower and a reduced VQ decoder (64² images, 64 image tokens).
Random weights (host-drawn), test-only rewards (no HPS model), one device.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).parents[1]))

from flax import nnx  # noqa: E402

from pairuni_jax.models.janus import Janus, JanusConfig  # noqa: E402
from pairuni_jax.models.llama import LlamaConfig  # noqa: E402
from pairuni_jax.models.random_init import random_module  # noqa: E402
from pairuni_jax.models.siglip import SiglipConfig  # noqa: E402
from pairuni_jax.models.vq import VQConfig  # noqa: E402
from pairuni_jax.rl.train_step import RolloutConfig  # noqa: E402
from tests import train_fixtures as fx  # noqa: E402


def small_config() -> JanusConfig:
    return JanusConfig(
        text=LlamaConfig.small(),
        vision=SiglipConfig(
            image_size=64, patch_size=16, hidden_size=256, num_layers=4, num_heads=4
        ),
        vq=VQConfig(
            num_embeddings=16384,
            base_channels=64,
            channel_multiplier=(1, 1, 2, 2),
            num_res_blocks=1,
            latent_channels=64,
            image_size=64,
        ),
        image_token_id=fx.IMG,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("tiny", "small"), default="tiny")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--k", type=int, default=4, help="rollouts per side per pair")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()

    config = JanusConfig.tiny() if args.config == "tiny" else small_config()
    fx.CONFIG = config  # the synthetic batch follows the model's sizes
    model = random_module(lambda: Janus(config, remat="full", rngs=nnx.Rngs(0)), seed=0)
    grpo = dataclasses.replace(
        fx.grpo_config(),
        rollout=RolloutConfig(
            num_und_rollouts=args.k, num_gen_rollouts=args.k, max_new_tokens=args.max_new_tokens
        ),
    )
    und_fn, gen_fn = fx.low_token_rewards(
        config.text.vocab_size // 2, config.vq.num_embeddings // 2
    )
    step, state = fx.build_step(grpo, und_fn, gen_fn, model=model)
    batch = fx.as_jax(fx.synthetic_batch(args.pairs, und_len=config.num_image_tokens + 24))

    start = time.perf_counter()
    compiled = step.lower(state, batch, jax.random.key(0)).compile()
    compile_s = time.perf_counter() - start
    mem = compiled.memory_analysis()
    state, metrics, _ = step(state, batch, jax.random.key(0))  # warm-up (same program)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for i in range(args.steps):
        state, metrics, _ = step(state, batch, jax.random.key(i + 1))
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - start) / args.steps
    rows = args.pairs * args.k
    print(
        f"config={args.config} pairs={args.pairs} K={args.k} devices={jax.device_count()} "
        f"backend={jax.default_backend()}"
    )
    print(f"compile: {compile_s:.1f} s")
    print(
        f"step: {step_s:.3f} s  ({2 * rows / step_s:.2f} samples/s: {rows} answers + {rows} images)"
    )
    print(f"image tokens/s: {rows * config.num_generated_image_tokens / step_s:.0f}")
    gib = 2**30
    print(
        f"memory_analysis: arguments {mem.argument_size_in_bytes / gib:.3f} GiB, "
        f"outputs {mem.output_size_in_bytes / gib:.3f} GiB, aliased {mem.alias_size_in_bytes / gib:.3f} GiB, "
        f"temporaries {mem.temp_size_in_bytes / gib:.3f} GiB"
    )
    print(
        f"peak estimate: {(mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes) / gib:.3f} GiB"
    )


if __name__ == "__main__":
    main()
