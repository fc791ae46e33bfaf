"""Benchmark: rollout sampling throughput, this JAX engine vs transformers ``generate``, same CPU.

Builds one random "small" Janus (LLM hidden 512, 8 layers, 8 heads, the real 102400-token
vocabulary and 16384-entry image codebook, 576 image tokens; tiny SigLIP and VQ towers, which only
the answers' prefill touches) in transformers, converts its weights with the project's mapping,
and times in one process, fp32, on the same cores:

- images: B prompts x 576 tokens with CFG 5 and temperature 1 (``sample_images`` vs
  ``generate(generation_mode="image", do_sample=True)``);
- answers: B answers x 64 sampled tokens to prompts of one image (576 placeholders) and a
  question (``sample_text`` vs ``generate(do_sample=True)``), no EOS for transformers; once with
  B distinct prompts and once with B/8 prompts x 8 answers (GRPO's group: one prefill per
  prompt in JAX, ``num_return_sequences`` in transformers).

JAX is timed after compilation (the compile time is printed too), transformers eagerly after a
warm-up. Each measurement is repeated ``--repeats`` times, alternating the frameworks so that load
from other processes hits both alike, and the best time of each is reported. The process is pinned
to ``--threads`` cores (default: all it may use) and torch uses as many threads.

- call overhead: a compiled function of the model that does almost nothing, called through
  ``nnx.jit`` (which copies the whole module state out after each call in flax 0.12) and through
  ``jax.jit`` over the split state (what ``sample_*_jit`` do), in ms per call.

    python scripts/bench_rollout.py [--threads 2] [--batch 16] [--answer-tokens 64] \\
        [--answers-per-prompt 1 8] [--repeats 2] [--only images|answers|overhead]
"""

from __future__ import annotations

import argparse
import os


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--batch", type=int, default=16, help="images and answers per batch")
    parser.add_argument("--answer-tokens", type=int, default=64)
    parser.add_argument(
        "--answers-per-prompt",
        type=int,
        nargs="+",
        default=[1, 8],
        help="answer groups to time (1: every answer its own prompt; 8: K_u of PairUni-1B)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    parser.add_argument("--only", choices=("images", "answers", "overhead"), default=None)
    return parser.parse_args()


ARGS = parse_args()
os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: ARGS.threads])

import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from flax import nnx  # noqa: E402

from pairuni_jax.checkpoint import hf_config, janus_mapping  # noqa: E402
from pairuni_jax.models.janus import Janus, JanusConfig  # noqa: E402
from pairuni_jax.models.llama import LlamaConfig  # noqa: E402
from pairuni_jax.models.siglip import SiglipConfig  # noqa: E402
from pairuni_jax.models.vq import VQConfig  # noqa: E402
from pairuni_jax.rollout import image as image_rollout  # noqa: E402
from pairuni_jax.rollout import text as text_rollout  # noqa: E402

BOS, EOS, PAD, BOI, EOI, IMAGE = 100000, 100001, 100015, 100016, 100593, 100581
SMALL = JanusConfig(
    text=LlamaConfig.small(),
    vision=SiglipConfig(hidden_size=64, num_layers=1, num_heads=2),
    vq=VQConfig(base_channels=32, latent_channels=32, num_res_blocks=1),
    image_token_id=IMAGE,
)


def build_models() -> tuple[transformers.JanusForConditionalGeneration, Janus]:
    torch.manual_seed(0)
    hf = transformers.JanusForConditionalGeneration(hf_config.transformers_config(SMALL, "float32"))
    hf = hf.eval().float()
    abstract = nnx.eval_shape(lambda: Janus(SMALL, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    tensors = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    params = janus_mapping.load_hf_state_dict(nnx.to_pure_dict(state), tensors)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
    return hf, nnx.merge(graphdef, state)


def text_ids(rng: np.random.Generator, n: int) -> list[int]:
    return rng.integers(10, 99999, size=n).tolist()


def report(name: str, tokens: tuple[int, int], jax_s: float, compile_s: float, torch_s: float):
    """tokens: (JAX, torch) tokens generated (JAX's answers may stop at a sampled EOS)."""
    jax_rate, torch_rate = tokens[0] / jax_s, tokens[1] / torch_s
    print(
        f"{name}: {tokens[1]} tokens | JAX {jax_rate:8.1f} tok/s ({jax_s:.2f} s, compile "
        f"{compile_s:.1f} s) | torch {torch_rate:8.1f} tok/s ({torch_s:.2f} s) | "
        f"JAX/torch = {jax_rate / torch_rate:.2f}x",
        flush=True,
    )


def seconds(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def compare(name: str, run_jax: Callable, run_torch: Callable, warm_up_torch: Callable) -> None:
    """Times ``run_jax(key)`` (the first call compiles) and ``run_torch()``, alternating, best
    of ``--repeats``; each returns the number of tokens it generated, once they exist."""
    first, _ = seconds(lambda: run_jax(jax.random.key(0)))
    warm_up_torch()
    jax_s, torch_s = [], []
    for r in range(ARGS.repeats):
        key = jax.random.key(r + 1)
        t, jax_tokens = seconds(lambda key=key: run_jax(key))
        jax_s.append(t)
        t, torch_tokens = seconds(run_torch)
        torch_s.append(t)
    report(name, (jax_tokens, torch_tokens), min(jax_s), first - min(jax_s), min(torch_s))


def bench_images(hf, model, batch: int) -> None:
    rng = np.random.default_rng(0)
    ids = np.array([[BOS, *text_ids(rng, 22), BOI] for _ in range(batch)], np.int32)
    settings = image_rollout.ImageSettings(pad_id=PAD, cfg_weight=5.0, temperature=1.0)
    input_ids, mask = jnp.asarray(ids), jnp.ones(ids.shape, bool)
    config = transformers.GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        guidance_scale=5.0,
        bos_token_id=BOS,
        pad_token_id=PAD,
        generation_kwargs={"boi_token_id": BOI},
    )

    def run_jax(key):
        out = image_rollout.sample_images_jit(model, input_ids, mask, key, settings)
        return np.asarray(out.tokens).size  # waits for the result

    def run_torch(rows=batch):
        with torch.no_grad():
            tokens = hf.generate(
                torch.from_numpy(ids[:rows]).long(),
                attention_mask=torch.ones(ids[:rows].shape).long(),
                generation_config=config,
                generation_mode="image",
            )
        return tokens.numel()

    name = f"images  {batch} x {SMALL.num_generated_image_tokens} (CFG 5)"
    compare(name, run_jax, run_torch, warm_up_torch=lambda: run_torch(rows=1))


def bench_answers(hf, model, batch: int, new_tokens: int, per_prompt: int) -> None:
    """``batch`` answers: ``batch / per_prompt`` prompts, ``per_prompt`` answers each (JAX: one
    prefill per prompt; transformers: ``num_return_sequences``, one prefill per answer)."""
    prompts = batch // per_prompt
    rng = np.random.default_rng(1)
    image = [BOI, *[IMAGE] * SMALL.num_image_tokens, EOI]
    ids = np.array(
        [[BOS, *text_ids(rng, 40), *image, *text_ids(rng, 20)] for _ in range(prompts)], np.int32
    )
    size = SMALL.vision.image_size
    pixels = rng.uniform(-1, 1, size=(prompts, size, size, 3)).astype(np.float32)
    settings = text_rollout.TextSettings(
        eos_id=EOS, pad_id=PAD, max_new_tokens=new_tokens, samples_per_prompt=per_prompt
    )
    input_ids, mask, jax_pixels = jnp.asarray(ids), jnp.ones(ids.shape, bool), jnp.asarray(pixels)
    kwargs = dict(
        input_ids=torch.from_numpy(ids).long(),
        attention_mask=torch.ones(ids.shape).long(),
        pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()),
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        eos_token_id=None,
        pad_token_id=PAD,
        bos_token_id=BOS,
        max_new_tokens=new_tokens,
        num_return_sequences=per_prompt,
    )

    def run_jax(key):
        out = text_rollout.sample_text_jit(model, input_ids, mask, jax_pixels, None, key, settings)
        return int(out.lengths.sum())  # waits for the result

    def run_torch(new=new_tokens):
        with torch.no_grad():
            return hf.generate(**{**kwargs, "max_new_tokens": new})[:, ids.shape[1] :].numel()

    name = (
        f"answers {batch} x {new_tokens} ({prompts} prompt(s) of image + text, {ids.shape[1]} "
        f"tokens, {per_prompt} answer(s) each)"
    )
    compare(name, run_jax, run_torch, warm_up_torch=lambda: run_torch(new=2))


def bench_overhead(model, calls: int = 20) -> None:
    """ms per call of ``x + 1`` next to the model's state: the entry point's own cost."""
    x = jnp.ones((8,), jnp.float32)
    via_nnx = nnx.jit(lambda m, x: x + 1)
    via_state = jax.jit(lambda graphdef, state, x: x + 1, static_argnums=0)

    def per_call(fn) -> float:
        fn().block_until_ready()  # compile
        start = time.perf_counter()
        for _ in range(calls):
            out = fn()
        out.block_until_ready()
        return (time.perf_counter() - start) / calls * 1e3

    nnx_ms = per_call(lambda: via_nnx(model, x))
    state_ms = per_call(lambda: via_state(*nnx.split(model), x))
    size = sum(v.nbytes for v in jax.tree.leaves(nnx.state(model))) / 1e6
    print(
        f"call overhead ({size:.0f} MB of params): nnx.jit {nnx_ms:.1f} ms | jax.jit over the "
        f"split state {state_ms:.1f} ms | nnx/jax = {nnx_ms / state_ms:.1f}x",
        flush=True,
    )


def main() -> None:
    torch.set_num_threads(ARGS.threads)
    print(
        f"JAX {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, {ARGS.threads} core(s), fp32",
        flush=True,
    )
    hf, model = build_models()
    if ARGS.only in (None, "overhead"):
        bench_overhead(model)
    if ARGS.only in (None, "images"):
        bench_images(hf, model, ARGS.batch)
    if ARGS.only in (None, "answers"):
        for per_prompt in ARGS.answers_per_prompt:
            bench_answers(hf, model, ARGS.batch, ARGS.answer_tokens, per_prompt)


if __name__ == "__main__":
    main()
