"""The published golden image tokens of Janus-Pro-1B (spec/janus.md §10).

transformers' integration test ``test_model_generate_images`` (``deepseek-community/Janus-Pro-1B``)
feeds ``GOLDEN_PROMPT`` as raw text + ``<begin_of_image>`` (no chat template, 17 ids), generates
greedily with guidance 5, and expects ``GOLDEN_FIRST_TOKENS`` as the first 50 image tokens. The
expectation was recorded on CUDA in a dtype the test does not state, so a mismatch is only held
against the port when transformers on this machine reproduces the golden tokens itself.
"""

from __future__ import annotations

import enum

import numpy as np

from pairuni_jax.models.janus import JanusConfig
from pairuni_jax.verify.checks import Check, Status, compare_tokens, first_divergence, skipped

GOLDEN_PROMPT = "A portrait of young girl. masterpiece, film grained, best quality."
GOLDEN_PROMPT_IDS = 17
GOLDEN_CFG_WEIGHT = 5.0
GOLDEN_FIRST_TOKENS = (
    4484, 4015, 15750, 506, 3758, 11651, 8597, 5739, 4861, 971,
    14985, 14834, 15438, 7548, 1820, 1465, 13529, 12761, 10503, 12761,
    14303, 6155, 4015, 11766, 705, 15736, 14146, 10417, 1951, 7713,
    14305, 15617, 6169, 2706, 8006, 14893, 3855, 10188, 15652, 6297,
    1097, 12108, 15038, 311, 14998, 15165, 897, 4044, 1762, 4676,
)  # fmt: skip
NAME = "image_tokens_golden"
TITLE = "first 50 CFG image tokens vs the golden tokens of transformers' test"


class GoldenMode(enum.Enum):
    """``auto``: compare when the model has Janus-Pro-1B's architecture; ``none``: never."""

    AUTO = "auto"
    NONE = "none"


def is_janus_pro_1b(config: JanusConfig) -> bool:
    """True when the sizes are Janus-Pro-1B's (a fine-tune of it has them too)."""
    want = JanusConfig.janus_pro_1b()
    fields = lambda c: (  # noqa: E731
        c.text.hidden_size,
        c.text.num_layers,
        c.text.intermediate_size,
        c.text.vocab_size,
        c.vision,
        c.vq,
    )
    return fields(config) == fields(want)


def golden_check(
    mode: GoldenMode,
    config: JanusConfig,
    prompt_length: int,
    jax_tokens: np.ndarray,
    reference_tokens: np.ndarray,
    *,
    judged: bool,
) -> Check:
    """The JAX tokens' first 50 against the golden ones (see the module docstring)."""
    if mode is GoldenMode.NONE:
        return skipped(NAME, TITLE, "--golden none")
    if not is_janus_pro_1b(config):
        return skipped(NAME, TITLE, "the model is not Janus-Pro-1B (the golden tokens are its)")
    golden = np.asarray(GOLDEN_FIRST_TOKENS)
    n = len(golden)
    reference_at = first_divergence(np.asarray(reference_tokens)[:n], golden)
    reference_note = (
        "transformers here reproduces them"
        if reference_at is None
        else f"transformers here also differs from them, first at token {reference_at}"
    )
    detail = f"prompt of {prompt_length} ids (the test's: {GOLDEN_PROMPT_IDS}); {reference_note}"
    check = compare_tokens(NAME, TITLE, np.asarray(jax_tokens)[:n], golden, judged=judged)
    if check.failed and (reference_at is not None or prompt_length != GOLDEN_PROMPT_IDS):
        detail += (
            "; not held against the port: the golden tokens were recorded on CUDA in an unstated "
            "dtype (or this is a fine-tune: pass --golden none); the comparison with "
            "transformers is the judged one"
        )
        return Check(check.name, check.title, Status.MEASURED, check.measured, "identical", detail)
    return Check(check.name, check.title, check.status, check.measured, check.tolerance, detail)
