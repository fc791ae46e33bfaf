"""The Janus checks: JAX outputs against transformers' on the same inputs (spec/janus.md §10).

Tolerances (fp32): logits, SigLIP features, aligner output and VQ pixels within
``1e-4 × max(1, scale)`` of the reference (scale = max |reference|); greedy tokens identical.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pairuni_jax.models.janus import JanusConfig
from pairuni_jax.verify import golden
from pairuni_jax.verify.checks import Check, Tolerance, compare_arrays, compare_tokens
from pairuni_jax.verify.janus_io import JanusInputs, JanusOutputs

RTOL = Tolerance(rtol=1e-4)
FIRST_TOKENS = 50


def janus_checks(
    got: JanusOutputs,
    want: JanusOutputs,
    inputs: JanusInputs,
    config: JanusConfig,
    *,
    judged: bool,
    golden_mode: golden.GoldenMode,
    decode_text: Callable[[list[int]], str],
) -> list[Check]:
    """``got`` (JAX) against ``want`` (transformers); judged in fp32, measured in bf16."""
    n_first = min(FIRST_TOKENS, len(want.image_tokens))
    prompt_length = inputs.image_prompt_ids.shape[1]
    answers = (
        f"JAX: {decode_text(got.answer.tolist())!r}; "
        f"transformers: {decode_text(want.answer.tolist())!r}"
    )
    return [
        compare_arrays(
            "text_logits",
            f"text logits over the image + question prompt ({inputs.question_ids.shape[1]} "
            "positions)",
            got.text_logits,
            want.text_logits,
            RTOL,
            judged=judged,
        ),
        compare_tokens(
            "text_answer",
            f"greedy answer, up to {inputs.max_new_tokens} new tokens",
            got.answer,
            want.answer,
            judged=judged,
            detail=answers,
        ),
        compare_tokens(
            "image_tokens_first_50",
            f"first {n_first} greedy CFG image tokens (guidance {inputs.cfg_weight:g}) vs "
            "transformers' generate(generation_mode='image')",
            got.image_tokens[:n_first],
            want.image_tokens[:n_first],
            judged=judged,
        ),
        golden.golden_check(
            golden_mode, config, prompt_length, got.image_tokens, want.image_tokens, judged=judged
        ),
        compare_tokens(
            "image_tokens_all",
            f"all {len(want.image_tokens)} greedy CFG image tokens vs transformers",
            got.image_tokens,
            want.image_tokens,
            judged=judged,
        ),
        compare_arrays(
            "vq_decode",
            "VQ decoder pixels of transformers' image tokens",
            got.decoded,
            want.decoded,
            RTOL,
            judged=judged,
        ),
        compare_arrays(
            "siglip_features",
            "SigLIP features of the image (after the final LayerNorm)",
            got.vision_features,
            want.vision_features,
            RTOL,
            judged=judged,
        ),
        compare_arrays(
            "aligner_output",
            "understanding aligner output (what replaces the image placeholders)",
            got.aligned,
            want.aligned,
            RTOL,
            judged=judged,
        ),
    ]


def side_by_side(got: JanusOutputs, want: JanusOutputs, min_side: int = 256) -> np.ndarray:
    """uint8[s, 3s, 3]: the JAX image, transformers' image and 10 × |Δ| of the two decodes of
    transformers' tokens, each enlarged (nearest) to at least ``min_side`` pixels."""
    to_u8 = lambda x: np.clip((x + 1) / 2 * 255, 0, 255).astype(np.uint8)  # noqa: E731
    diff = np.clip(np.abs(got.decoded - want.decoded) * 10 * 127.5, 0, 255).astype(np.uint8)
    tiles = [to_u8(got.own_image), to_u8(want.own_image), diff]
    factor = max(1, -(-min_side // tiles[0].shape[0]))
    tiles = [t.repeat(factor, axis=0).repeat(factor, axis=1) for t in tiles]
    return np.concatenate(tiles, axis=1)
