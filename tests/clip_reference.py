"""PyTorch references for the CLIP / HPS tests: a tiny random open_clip ViT-H-14-family model and
hpsv2's scoring path (spec/hpsv2.md §1.1, §1.3, §3), plus the JAX model built from it."""

from __future__ import annotations

import numpy as np
import open_clip
import torch
import torchvision.transforms.functional as TF
from flax import nnx
from PIL import Image
from torchvision.transforms import InterpolationMode

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


def hps_preprocess(image_u8: np.ndarray) -> torch.Tensor:
    """hpsv2 ``preprocess_val``: ToTensor, ResizeMaxSize(224) (tensor bicubic, torchvision's
    default antialias), zero pad, OpenAI Normalize. uint8[H, W, 3] -> float32[3, 224, 224]."""
    x = TF.to_tensor(Image.fromarray(image_u8))
    height, width = x.shape[1:]
    scale = 224 / max(height, width)
    if scale != 1.0:
        x = TF.resize(x, [round(height * scale), round(width * scale)], InterpolationMode.BICUBIC)
    pad_h, pad_w = 224 - x.shape[1], 224 - x.shape[2]
    x = TF.pad(x, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    return TF.normalize(x, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)


def janus_uint8(pixels: np.ndarray) -> np.ndarray:
    """What Janus saves from decoder output in [-1, 1]: truncation to uint8."""
    return np.clip((pixels.astype(np.float32) + 1) / 2 * 255, 0, 255).astype(np.uint8)


def reference_hps(model: torch.nn.Module, pixels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """hpsv2.score's arithmetic on Janus pixels float[B, H, W, 3] and token ids [B, 77]."""
    images = torch.stack([hps_preprocess(janus_uint8(p)) for p in pixels])
    with torch.no_grad():
        out = model(images, torch.from_numpy(ids).long())
    image_features, text_features = out[0], out[1]
    return torch.diagonal(image_features @ text_features.T).numpy()
