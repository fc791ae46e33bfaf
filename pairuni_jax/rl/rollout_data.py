"""What a train step keeps of its rollouts: one typed record per side, and the sampled previews.

Shape letters: B_u = P·K_u answer rows and B_g = P·K_g image rows (pair-major: row p·K + k is
sample k of pair p), S_u / S_g prompt lengths, N answer tokens, I image tokens, s image side.
"""

from __future__ import annotations

import flax.struct
import jax

Array = jax.Array


@flax.struct.dataclass
class SideRollouts:
    """One side's rollouts as the loss reads them; every field has one row per sample.

    prompt_ids: int32[B, S] the (repeated) left-padded prompt of each row; prompt_mask: bool[B, S].
    completion: int32[B, T] the sampled tokens (answer tokens, or image tokens);
    mask: bool[B, T], True on the tokens the loss counts.
    old_logp: float32[B, T] their log-probs at sampling time (the ratio's denominator).
    advantages: float32[B] pair-weighted, group-normalised (one per trajectory).
    ref_logp: float32[B, T] under the reference policy, or None when the KL term is off.
    """

    prompt_ids: Array
    prompt_mask: Array
    completion: Array
    mask: Array
    old_logp: Array
    advantages: Array
    ref_logp: Array | None


@flax.struct.dataclass
class UnderstandingRollouts(SideRollouts):
    """Sampled answers (T = N). pixel_values: float[B_u, s, s, 3], each row's image."""

    pixel_values: Array


@flax.struct.dataclass
class GenerationRollouts(SideRollouts):
    """Sampled images as VQ tokens (T = I; ``mask`` is all True)."""


@flax.struct.dataclass
class StepSamples:
    """The rollouts of the batch's first pair, for people to look at (stay on the device until
    read).

    images: uint8[K_g, s, s, 3] decoded; image_rewards: float32[K_g].
    answers: int32[K_u, N] token ids; answer_mask: bool[K_u, N]; answer_rewards: float32[K_u].
    """

    images: Array
    image_rewards: Array
    answers: Array
    answer_mask: Array
    answer_rewards: Array
