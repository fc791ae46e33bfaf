"""The rollout engine: jitted KV-cache sampling of answers (``text``) and CFG images (``image``)."""

from pairuni_jax.rollout.image import (
    ImageRollout,
    ImageSettings,
    decode_images,
    decode_images_jit,
    sample_images,
    sample_images_jit,
)
from pairuni_jax.rollout.sampling import SamplingRule, rule_log_probs
from pairuni_jax.rollout.text import TextRollout, TextSettings, sample_text, sample_text_jit

__all__ = [
    "ImageRollout",
    "ImageSettings",
    "SamplingRule",
    "TextRollout",
    "TextSettings",
    "decode_images",
    "decode_images_jit",
    "sample_images",
    "sample_images_jit",
    "sample_text",
    "sample_text_jit",
    "rule_log_probs",
]
