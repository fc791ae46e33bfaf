"""The HPSv2 reward in the graph: cosine of CLIP image and prompt features (spec/hpsv2.md §1.5).

``hps_score`` takes Janus decoder pixels in [-1, 1] and the prompt either as precomputed,
normalised text features (the trainer's path: ``clip_text.encode_prompts`` once per prompt) or
as CLIP token ids (text tower in the same program). The score is the raw cosine, about 0.15-0.35
for real images with HPS v2.1, with no logit scale.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from pairuni_jax.checkpoint import model_dir
from pairuni_jax.checkpoint.hpsv2 import REWARD_KIND
from pairuni_jax.models.clip import CLIP, CLIPConfig
from pairuni_jax.models.stack import RematPolicy
from pairuni_jax.rewards.preprocess import janus_to_clip


def l2_normalize(x: jax.Array) -> jax.Array:
    """x / max(||x||, 1e-12) over the last axis, in fp32 (torch ``F.normalize``)."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def prompt_features(model: CLIP, text_ids: jax.Array) -> jax.Array:
    """text_ids: int32[B, 77] CLIP token ids. Returns normalised float32[B, D]."""
    return l2_normalize(model.encode_text(text_ids))


def hps_score(
    model: CLIP,
    pixels: jax.Array,
    text_features: jax.Array | None = None,
    text_ids: jax.Array | None = None,
    *,
    quantize: bool = True,
) -> jax.Array:
    """HPS of generated images for their prompts.

    pixels: float[B, S, S, 3] in [-1, 1], Janus decoder output (S = 384 for Janus-Pro).
    text_features: float32[B, D] (``prompt_features`` / ``clip_text.encode_prompts``), or
    text_ids: int32[B, 77] CLIP token ids (``clip_text.clip_token_ids``); exactly one of the two.
    quantize: reproduce the uint8 image the reference scores (straight-through; see
      ``janus_to_clip``).
    Returns float32[B]: cosine of the normalised image and text features.
    """
    if (text_features is None) == (text_ids is None):
        raise ValueError("hps_score: pass exactly one of text_features and text_ids")
    clip_pixels = janus_to_clip(pixels, model.config.vision.image_size, quantize=quantize)
    image = l2_normalize(model.encode_image(clip_pixels))
    text = l2_normalize(text_features) if text_ids is None else prompt_features(model, text_ids)
    return jnp.sum(image * text, axis=-1)


def read_reward_config(directory: str | Path) -> CLIPConfig:
    """The CLIPConfig of a reward directory written by ``pairuni convert hpsv2``."""
    meta = model_dir.read_config(directory)
    if meta.get("kind") != REWARD_KIND:
        raise model_dir.NotAModelDirError(
            f"{directory}/{model_dir.CONFIG_FILE}: kind is {meta.get('kind')!r}, "
            f"expected {REWARD_KIND!r} (write it with `pairuni convert hpsv2`)"
        )
    return CLIPConfig.from_dict(meta["clip"])


def load_reward_model(
    directory: str | Path,
    mesh: Mesh | None = None,
    *,
    dtype: jnp.dtype = jnp.float32,
    param_dtype: jnp.dtype = jnp.float32,
    remat: RematPolicy = RematPolicy.NONE,
) -> CLIP:
    """Restores a reward directory written by ``pairuni convert hpsv2``.

    mesh: shard every parameter by its logical axes while reading (each host reads only its
      slices); None puts the model on the default device.
    dtype: compute dtype (bf16 on accelerators); param_dtype: stored params are fp32 and are
      cast on restore.
    """
    config = read_reward_config(directory)
    abstract = nnx.eval_shape(
        lambda: CLIP(config, dtype=dtype, param_dtype=param_dtype, remat=remat, rngs=nnx.Rngs(0))
    )
    return model_dir.restore_module(directory, abstract, mesh)
