"""Compile time, step time, samples/s and compiled memory of the Pair-GRPO train step.

    python scripts/bench_train_step.py [--config tiny|small] [--steps 5] [--pairs 2] [--k 4]
        [--lora [--rank 16] [--base-dtype bf16]]

"small": an LLM of width 512 × 8 layers with the real 102,400-token vocabulary and 16,384-code
image codebook, a 4-layer vision tower and a reduced VQ decoder (64² images, 64 image tokens).
Random weights (host-drawn), test-only rewards (no HPS model), one device.

``--lora``: the same step twice, full fine-tuning and LoRA adapters (``model.lora``'s default
targets: the LLM's attention and MLP projections) on the same base, with the LoRA / full ratios.
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

from pairuni_jax.models import lora  # noqa: E402
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


GIB = 2**30


def measure(model: Janus, args: argparse.Namespace) -> dict[str, float]:
    """Compiles and times the step of ``model``; memory from ``memory_analysis`` (bytes)."""
    config = model.config
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
    # Committed, as the trainer places it: the step's outputs are, and an uncommitted input
    # would compile the program a second time at the second call.
    state = jax.device_put(state, jax.devices()[0])
    batch = fx.as_jax(fx.synthetic_batch(args.pairs, und_len=config.num_image_tokens + 24))
    trainable = sum(x.size for x in jax.tree.leaves(state.params))

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
    return {
        "trainable": trainable,
        "compile_s": compile_s,
        "step_s": (time.perf_counter() - start) / args.steps,
        "arguments": mem.argument_size_in_bytes,
        "outputs": mem.output_size_in_bytes,
        "aliased": mem.alias_size_in_bytes,
        "temporaries": mem.temp_size_in_bytes,
        "peak": mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes
        + mem.temp_size_in_bytes,
    }


def report(name: str, m: dict[str, float], args: argparse.Namespace, config: JanusConfig) -> None:
    rows = args.pairs * args.k
    step_s = m["step_s"]
    print(f"[{name}] trainable params: {m['trainable']:,}")
    print(f"[{name}] compile: {m['compile_s']:.1f} s")
    print(
        f"[{name}] step: {step_s:.3f} s  ({2 * rows / step_s:.2f} samples/s: "
        f"{rows} answers + {rows} images)"
    )
    print(f"[{name}] image tokens/s: {rows * config.num_generated_image_tokens / step_s:.0f}")
    print(
        f"[{name}] memory_analysis: arguments {m['arguments'] / GIB:.3f} GiB, "
        f"outputs {m['outputs'] / GIB:.3f} GiB, aliased {m['aliased'] / GIB:.3f} GiB, "
        f"temporaries {m['temporaries'] / GIB:.3f} GiB"
    )
    print(f"[{name}] peak estimate: {m['peak'] / GIB:.3f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("tiny", "small"), default="tiny")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--k", type=int, default=4, help="rollouts per side per pair")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--lora", action="store_true", help="full fine-tuning vs LoRA adapters")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (with --lora)")
    parser.add_argument(
        "--base-dtype",
        choices=[d.value for d in lora.BaseDType],
        default=lora.BaseDType.BF16.value,
        help="storage of the frozen base (with --lora)",
    )
    args = parser.parse_args()

    config = JanusConfig.tiny() if args.config == "tiny" else small_config()
    fx.CONFIG = config  # the synthetic batch follows the model's sizes

    def base() -> Janus:
        return random_module(lambda: Janus(config, remat="full", rngs=nnx.Rngs(0)), seed=0)

    print(
        f"config={args.config} pairs={args.pairs} K={args.k} devices={jax.device_count()} "
        f"backend={jax.default_backend()}"
    )
    full = measure(base(), args)
    report("full", full, args, config)
    if not args.lora:
        return
    lora_config = lora.LoraConfig(
        rank=args.rank, alpha=2.0 * args.rank, base_dtype=lora.BaseDType(args.base_dtype)
    )
    adapted = measure(lora.add_adapters(base(), lora_config), args)
    report(f"lora r={args.rank} base={args.base_dtype}", adapted, args, config)
    ratios = ", ".join(
        f"{key} {adapted[key] / full[key]:.3f}"
        for key in ("trainable", "step_s", "arguments", "temporaries", "peak")
        if full[key]
    )
    print(f"LoRA / full: {ratios}")


if __name__ == "__main__":
    main()
