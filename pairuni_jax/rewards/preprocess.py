"""In-graph CLIP preprocessing of Janus decoder output (spec/hpsv2.md §1.3, §4.3).

Reproduces what the PyTorch pipeline does to a generated image before HPSv2 sees it: Janus writes
``floor(clip((x + 1) / 2 * 255, 0, 255))`` into a uint8 image, hpsv2's ``preprocess_val`` turns it
into a float tensor, resizes the longest side to 224 with antialiased bicubic (torchvision >= 0.17),
zero-pads to a square and normalises with the OpenAI mean/std. Everything here runs in fp32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def janus_to_clip(pixels: jax.Array, image_size: int = 224, quantize: bool = True) -> jax.Array:
    """Janus decoder pixels to the CLIP image input.

    pixels: float[B, H, W, 3] in [-1, 1] (values outside are clipped, as the uint8 cast does).
    quantize: round down to the 256 uint8 levels in the forward pass with an identity gradient
      (straight-through), matching the reference bit for bit up to resize noise.
    Returns float32[B, image_size, image_size, 3], CLIP-normalised.
    """
    x255 = jnp.clip((pixels.astype(jnp.float32) + 1.0) / 2.0 * 255.0, 0.0, 255.0)
    if quantize:
        x255 = x255 + jax.lax.stop_gradient(jnp.floor(x255) - x255)
    x = x255 / 255.0
    x = _resize_longest_and_pad(x, image_size)
    mean = jnp.asarray(OPENAI_MEAN, jnp.float32)
    std = jnp.asarray(OPENAI_STD, jnp.float32)
    return (x - mean) / std


def _resize_longest_and_pad(x: jax.Array, size: int) -> jax.Array:
    """hpsv2 ``ResizeMaxSize``: longest side to ``size`` (AA bicubic), then centred zero padding.

    x: float32[B, H, W, 3] in [0, 1]. No clamp after the resize: the reference keeps overshoot.
    """
    batch, height, width, channels = x.shape
    scale = size / max(height, width)
    if scale != 1.0:
        new_h, new_w = round(height * scale), round(width * scale)  # Python round, as hpsv2
        x = jax.image.resize(x, (batch, new_h, new_w, channels), "bicubic", antialias=True)
    pad_h, pad_w = size - x.shape[1], size - x.shape[2]
    if pad_h or pad_w:
        x = jnp.pad(
            x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
        )
    return x
