"""Benchmark: HPS scoring throughput, this JAX port vs open_clip in PyTorch, same CPU and weights.

Builds a random-weight open_clip ViT-H-14 (no download), converts it with the project's
converter, and times scoring a batch of Janus-size images (384 px, values in [-1, 1]):

- ``torch (hpsv2.score)``: uint8 floor, antialiased bicubic to 224, normalise, ``model(image,
  text)`` and the diagonal of the feature products (both towers each call, as hpsv2 does);
- ``torch (image tower)``: the same with precomputed text features;
- ``jax fp32 (text ids)``: ``hps_score(model, pixels, text_ids=...)``, text tower in the program;
- ``jax fp32 (text features)``: ``hps_score(model, pixels, text_features=...)``;
- ``jax bf16 (text features)``: the same with bf16 params and matmuls (fp32 preprocessing, norms,
  softmax and cosine): the trainer's configuration on accelerators.

fp32 against fp32 is the like-for-like comparison; the bf16 rows show what the reduced-precision
path buys on a CPU with bf16 dot instructions.

The runs alternate between the frameworks so that load from other processes hits both alike.
Needs about 14 GB of host memory for ViT-H-14 (the models plus the conversion) and 10-20 minutes
on 2 CPU cores. Measured on 2 shared AMD EPYC (Zen 4) cores, batch 8, best of 3 (d9048fa):
torch hpsv2.score 0.135 images/s, torch image tower 0.227, jax fp32 text ids 0.178, jax fp32
text features 0.228, jax bf16 text features 0.372; ratios 1.32x (fp32, both towers), 1.00x
(fp32, image tower), 1.64x (jax bf16 vs torch fp32, image tower), 2.76x (trainer path vs
hpsv2.score).

    python scripts/bench_reward.py [--batch 8] [--repeats 3] [--preset vit_h_14|tiny]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from flax import nnx

from pairuni_jax.checkpoint.hpsv2 import convert_state_dict
from pairuni_jax.models.clip import CLIP, CLIPConfig
from pairuni_jax.rewards.hps import hps_score, prompt_features

PROMPTS = ("A cat with two horns on its head", "a photo of a towel and a zebra")
OPEN_CLIP_TINY = dict(
    embed_dim=32,
    vision_cfg=dict(image_size=224, layers=2, width=64, head_width=16, patch_size=14),
    text_cfg=dict(context_length=77, vocab_size=49408, width=48, heads=4, layers=2),
)


def torch_preprocess(pixels: torch.Tensor) -> torch.Tensor:
    """hpsv2's transform on Janus pixels [B, 3, 384, 384] in [-1, 1] (batched, tensor path)."""
    u8 = torch.clamp((pixels + 1) / 2 * 255, 0, 255).to(torch.uint8)
    x = F.interpolate(u8.float() / 255, size=(224, 224), mode="bicubic", antialias=True)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def time_it(fn: Callable[[], object], repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", choices=("vit_h_14", "tiny"), default="vit_h_14")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)

    if args.preset == "vit_h_14":
        reference = open_clip.create_model("ViT-H-14", pretrained=None)
    else:
        reference = open_clip.model.CLIP(**OPEN_CLIP_TINY)
    reference = reference.eval()
    config = getattr(CLIPConfig, args.preset)()
    abstract = nnx.eval_shape(lambda: CLIP(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    params = jax.device_put(convert_state_dict(reference.state_dict(), config))
    nnx.replace_by_pure_dict(state, params)
    model = nnx.merge(graphdef, state)
    bf16 = jnp.bfloat16
    abstract = nnx.eval_shape(lambda: CLIP(config, dtype=bf16, param_dtype=bf16, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda x: x.astype(bf16), params))
    model_bf16 = nnx.merge(graphdef, state)
    del params

    rng = np.random.default_rng(0)
    pixels = rng.uniform(-1, 1, (args.batch, 384, 384, 3)).astype(np.float32)
    ids = open_clip.get_tokenizer("ViT-H-14")([PROMPTS[i % 2] for i in range(args.batch)])
    ids_np = ids.numpy().astype(np.int32)
    pixels_t = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()

    with torch.no_grad():
        text_t = F.normalize(reference.encode_text(ids), dim=-1)
    text_j = jax.block_until_ready(jax.jit(prompt_features)(model, ids_np))
    score_features = jax.jit(lambda m, x, t: hps_score(m, x, text_features=t))
    score_ids = jax.jit(lambda m, x, i: hps_score(m, x, text_ids=i))

    @torch.no_grad()
    def torch_full() -> torch.Tensor:
        image_features, text_features, _ = reference(torch_preprocess(pixels_t), ids)
        return torch.diagonal(image_features @ text_features.T)

    @torch.no_grad()
    def torch_image() -> torch.Tensor:
        image = F.normalize(reference.encode_image(torch_preprocess(pixels_t)), dim=-1)
        return (image * text_t).sum(-1)

    runs: dict[str, Callable[[], object]] = {
        "torch (hpsv2.score)": torch_full,
        "jax fp32 (text ids)": lambda: jax.block_until_ready(score_ids(model, pixels, ids_np)),
        "torch (image tower)": torch_image,
        "jax fp32 (text features)": lambda: jax.block_until_ready(
            score_features(model, pixels, text_j)
        ),
        "jax bf16 (text features)": lambda: jax.block_until_ready(
            score_features(model_bf16, pixels, text_j)
        ),
    }
    start = time.perf_counter()
    scores = {name: np.asarray(fn()) for name, fn in runs.items()}  # warm-up and compile
    print(f"warm-up (incl. XLA compile) {time.perf_counter() - start:.1f} s")
    want = scores["torch (hpsv2.score)"]
    for name, got in scores.items():
        print(f"max |score - torch score| {name:26s} {np.abs(got - want).max():.2e}")

    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            seconds[name] += time_it(fn, 1)
    rate = {name: args.batch / min(s) for name, s in seconds.items()}
    print(
        f"\n{args.preset}, batch {args.batch}, {os.cpu_count()} CPU threads, best of {args.repeats}"
    )
    for name, images_per_s in rate.items():
        print(f"  {name:26s} {images_per_s:8.3f} images/s  ({min(seconds[name]):.2f} s/batch)")
    ratios = {
        "fp32, both towers (jax text ids / torch hpsv2.score)": (
            "jax fp32 (text ids)",
            "torch (hpsv2.score)",
        ),
        "fp32, image tower (text features, both)": (
            "jax fp32 (text features)",
            "torch (image tower)",
        ),
        "jax bf16 / torch fp32, image tower": ("jax bf16 (text features)", "torch (image tower)"),
        "jax bf16 trainer path / torch hpsv2.score": (
            "jax bf16 (text features)",
            "torch (hpsv2.score)",
        ),
    }
    for label, (ours, theirs) in ratios.items():
        print(f"  ratio {label:52s} {rate[ours] / rate[theirs]:.2f}x")


if __name__ == "__main__":
    main()
