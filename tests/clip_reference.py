"""PyTorch references for the CLIP / HPS tests: a tiny random open_clip ViT-H-14-family model
(spec/hpsv2.md §3) and the JAX model built from it; hpsv2's scoring path (§1.1, §1.3) is the
library's ``pairuni_jax.verify.hps_reference``, which ``pairuni verify`` runs."""

from __future__ import annotations

import open_clip
import torch
from flax import nnx

from pairuni_jax.checkpoint.hpsv2 import convert_state_dict
from pairuni_jax.models.clip import CLIP, CLIPConfig

TINY = dict(
    embed_dim=32,
    vision_cfg=dict(image_size=224, layers=2, width=64, head_width=16, patch_size=14),
    text_cfg=dict(context_length=77, vocab_size=49408, width=48, heads=4, layers=2),
)


def tiny_open_clip(seed: int = 0) -> open_clip.model.CLIP:
    """open_clip ``CLIP(**TINY)`` in eval mode with every parameter perturbed (LN and biases
    are 1/0 at init, which would hide mapping bugs)."""
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**TINY).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


def jax_clip_from(model: torch.nn.Module, config: CLIPConfig, **options) -> CLIP:
    """The Flax CLIP with ``model``'s weights, through the project's converter."""
    params = convert_state_dict(model.state_dict(), config)
    abstract = nnx.eval_shape(lambda: CLIP(config, **options, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)
