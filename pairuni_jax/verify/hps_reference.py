"""The HPS reference: open_clip's CLIP with hpsv2's scoring arithmetic (spec/hpsv2.md §1.1-1.5).

``hpsv2.score`` builds ``ViT-H-14``, loads ``ckpt['state_dict']`` strictly, preprocesses with its
``preprocess_val`` (ToTensor, ResizeMaxSize(224) by torchvision tensor bicubic, zero padding,
OpenAI Normalize) and returns the cosine of the normalised features. The hpsv2 wheel itself cannot
be imported offline (it does not ship its BPE file), so its transform is reproduced here with
torchvision, as its source reads; the model and the tokenizer are open_clip's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import open_clip
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from pairuni_jax.models.clip import CLIPConfig

HPS_IMAGE_SIZE = 224


def open_clip_kwargs(config: CLIPConfig) -> dict[str, Any]:
    """``open_clip.model.CLIP`` arguments of the architecture ``config`` describes."""
    v, t = config.vision, config.text
    return dict(
        embed_dim=config.embed_dim,
        vision_cfg=dict(
            image_size=v.image_size,
            layers=v.layers,
            width=v.width,
            head_width=v.width // v.heads,
            mlp_ratio=v.mlp_dim / v.width,
            patch_size=v.patch_size,
        ),
        text_cfg=dict(
            context_length=t.context_length,
            vocab_size=t.vocab_size,
            width=t.width,
            heads=t.heads,
            layers=t.layers,
            mlp_ratio=t.mlp_dim / t.width,
        ),
    )


def open_clip_model(config: CLIPConfig, state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """open_clip's CLIP in fp32 with ``state`` loaded strictly, as ``hpsv2`` loads its file."""
    model = open_clip.model.CLIP(**open_clip_kwargs(config)).eval()
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model


def open_clip_token_ids(texts: Sequence[str], context_length: int = 77) -> np.ndarray:
    """int32[len(texts), context_length]: open_clip's ``ViT-H-14`` tokenizer (hpsv2's)."""
    tokenizer = open_clip.get_tokenizer("ViT-H-14", context_length=context_length)
    return tokenizer(list(texts)).numpy().astype(np.int32)


def hps_preprocess(image_u8: np.ndarray) -> torch.Tensor:
    """hpsv2 ``preprocess_val``: ToTensor, ResizeMaxSize(224) (tensor bicubic, torchvision's
    default antialias), zero pad, OpenAI Normalize. uint8[H, W, 3] -> float32[3, 224, 224]."""
    x = TF.to_tensor(Image.fromarray(image_u8))
    height, width = x.shape[1:]
    scale = HPS_IMAGE_SIZE / max(height, width)
    if scale != 1.0:
        x = TF.resize(x, [round(height * scale), round(width * scale)], InterpolationMode.BICUBIC)
    pad_h, pad_w = HPS_IMAGE_SIZE - x.shape[1], HPS_IMAGE_SIZE - x.shape[2]
    x = TF.pad(x, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    return TF.normalize(x, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)


def janus_uint8(pixels: np.ndarray) -> np.ndarray:
    """What Janus saves from decoder output in [-1, 1]: truncation to uint8."""
    return np.clip((pixels.astype(np.float32) + 1) / 2 * 255, 0, 255).astype(np.uint8)


def reference_scores(
    model: torch.nn.Module, images_u8: Sequence[np.ndarray], ids: np.ndarray
) -> np.ndarray:
    """hpsv2.score's arithmetic: float32[B] for B images uint8[H, W, 3] (any sizes) and token
    ids [B, 77]."""
    images = torch.stack([hps_preprocess(image) for image in images_u8])
    with torch.inference_mode():
        out = model(images, torch.from_numpy(ids).long())
    image_features, text_features = out[0], out[1]  # normalised by CLIP.forward
    return torch.diagonal(image_features @ text_features.T).numpy()


def reference_hps(model: torch.nn.Module, pixels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``reference_scores`` of Janus decoder pixels float[B, H, W, 3] in [-1, 1]."""
    return reference_scores(model, [janus_uint8(p) for p in pixels], ids)
