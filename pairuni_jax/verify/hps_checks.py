"""The HPS checks: the converted reward model's scores and tokenizer against open_clip + hpsv2.

Images are given as Janus decoder pixels in [-1, 1] (a photograph as the centres of its uint8
levels, so the uint8 image both sides score is the photograph itself). Tolerances (fp32): scores
within 1e-4 of the reference cosine; token ids identical (in any dtype).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from pairuni_jax.models.clip import CLIP
from pairuni_jax.rewards import clip_text
from pairuni_jax.rewards.hps import hps_score
from pairuni_jax.verify.checks import Check, Status, Tolerance, compare_arrays

SCORE_TOLERANCE = Tolerance(atol=1e-4)
# Prompts whose open_clip ids must be reproduced: cleaning, unicode, HTML entities, truncation.
TOKENIZER_PROMPTS = (
    "“Curly quotes”, café &amp; naïve résumé — dashes…",
    "mojibake: cafÃ© &lt;b&gt;bold&lt;/b&gt;   spaced\tout",
    " ".join(["a very long prompt"] * 30),
)


@dataclasses.dataclass(frozen=True)
class HPSCase:
    """label: what the image is; pixels: float32[H, W, 3] in [-1, 1]; prompt: its text."""

    label: str
    pixels: np.ndarray
    prompt: str


def photo_pixels(image_u8: np.ndarray) -> np.ndarray:
    """float32[H, W, 3] in [-1, 1] whose Janus uint8 image is ``image_u8`` (level centres)."""
    return (image_u8.astype(np.float32) + 0.5) / 127.5 - 1.0


def jax_scores(model: CLIP, tokenizer, cases: Sequence[HPSCase], context_length: int) -> np.ndarray:
    """float32[len(cases)]: ``rewards.hps.hps_score``, one batch per image size."""
    scores = np.zeros(len(cases), np.float32)
    score = jax.jit(hps_score)
    for shape in dict.fromkeys(c.pixels.shape for c in cases):
        rows = [i for i, c in enumerate(cases) if c.pixels.shape == shape]
        ids = clip_text.clip_token_ids(tokenizer, [cases[i].prompt for i in rows], context_length)
        pixels = np.stack([cases[i].pixels for i in rows])
        scores[rows] = np.asarray(score(model, pixels, text_ids=ids))
    return scores


def hps_checks(
    cases: Sequence[HPSCase],
    got: np.ndarray,
    want: np.ndarray,
    got_ids: np.ndarray,
    want_ids: np.ndarray,
    *,
    judged: bool,
) -> list[Check]:
    """Scores ``got`` (JAX) vs ``want`` (open_clip), ids ``got_ids`` vs ``want_ids`` int[N, 77]."""
    rows = "; ".join(
        f"{c.label}: JAX {g:.6f}, reference {w:.6f}" for c, g, w in zip(cases, got, want)
    )
    scores = compare_arrays(
        "hps_scores",
        f"HPS scores of {len(cases)} image/prompt pairs (bundled and generated)",
        got,
        want,
        SCORE_TOLERANCE,
        judged=judged,
    )
    scores = dataclasses.replace(scores, detail=rows)
    same = np.array_equal(got_ids, want_ids)
    bad_rows = np.flatnonzero(np.any(got_ids != want_ids, axis=-1)) if not same else []
    tokens = Check(
        "hps_tokenizer",
        f"CLIP token ids of {len(got_ids)} prompts vs open_clip's tokenizer",
        Status.PASS if same else Status.FAIL,
        f"{len(got_ids) - len(bad_rows)}/{len(got_ids)} prompts identical",
        "identical",
        "" if same else f"differing prompts: rows {list(map(int, bad_rows))}",
    )
    return [scores, tokens]
