"""What both sides of the Janus comparison take and give: the same inputs, outputs as NumPy.

Shape letters: L understanding prompt length, G image prompt length, S image side, V text
vocabulary, P patches / image tokens, C SigLIP width, H LLM width.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pairuni_jax.data.prompts import SpecialIds


@dataclasses.dataclass(frozen=True)
class JanusInputs:
    """question_ids: int32[1, L], the understanding prompt (chat template, image placeholders);
    pixels: float32[1, S, S, 3] in [-1, 1] (Janus preprocessing);
    image_prompt_ids: int32[1, G], raw text + ``<begin_of_image>``;
    ids: the tokenizer's special ids; max_new_tokens: greedy answer length; cfg_weight: guidance.
    """

    question_ids: np.ndarray
    pixels: np.ndarray
    image_prompt_ids: np.ndarray
    ids: SpecialIds
    max_new_tokens: int
    cfg_weight: float


@dataclasses.dataclass(frozen=True)
class JanusOutputs:
    """text_logits: float32[L, V] over the understanding prompt; answer: int32[n ≤ N] greedy
    tokens up to and including EOS; image_tokens: int32[P] greedy CFG tokens;
    decoded: float32[S, S, 3], the VQ decode of the *reference's* image tokens (so pixels are
    compared on the same tokens); own_image: float32[S, S, 3], the decode of this side's tokens;
    vision_features: float32[P, C] (SigLIP, after its final LayerNorm); aligned: float32[P, H]."""

    text_logits: np.ndarray
    answer: np.ndarray
    image_tokens: np.ndarray
    decoded: np.ndarray
    own_image: np.ndarray
    vision_features: np.ndarray
    aligned: np.ndarray


def until_eos(tokens: np.ndarray, eos_id: int) -> np.ndarray:
    """int32[n]: ``tokens`` up to and including the first ``eos_id`` (all of them if none)."""
    tokens = np.asarray(tokens, np.int32).reshape(-1)
    hits = np.flatnonzero(tokens == eos_id)
    return tokens[: int(hits[0]) + 1] if hits.size else tokens
