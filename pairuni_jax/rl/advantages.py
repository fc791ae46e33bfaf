"""Group-normalised advantages and pair weights (PairUni Eqs. 2–4; where the pair weight comes in).

Shape letters: P pairs, K rollouts per pair on one side (K_u answers or K_g images).
"""

from __future__ import annotations

import enum

import jax
import jax.numpy as jnp

Array = jax.Array


class PairWeighting(enum.Enum):
    """How a retrieved pair's similarity s becomes its weight; aligned pairs always weigh 1."""

    SQRT = "sqrt"  # PairUni: w = sqrt(s)
    LINEAR = "linear"  # w = s
    NONE = "none"  # w = 1 for every pair


def group_advantages(rewards: Array, eps: float = 1e-4, ddof: int = 1) -> Array:
    """A = (r − mean) / (std + eps) within each pair's group.

    rewards: float[P, K]. ``ddof=1`` is the unbiased std of torch's ``Tensor.std`` (T2I-R1).
    A group whose rewards are all equal gets exactly zero advantage: the float32 mean of K equal
    rewards is not always that reward (0.7 × 8 on XLA:CPU is off by one ulp), and dividing the
    residue by ``std + eps`` ≈ eps would hand every member the same-signed advantage.
    Returns float32[P, K].
    """
    rewards = rewards.astype(jnp.float32)
    mean = rewards.mean(axis=1, keepdims=True)
    std = rewards.std(axis=1, keepdims=True, ddof=ddof if rewards.shape[1] > ddof else 0)
    constant = rewards.max(axis=1, keepdims=True) == rewards.min(axis=1, keepdims=True)
    return jnp.where(constant, 0.0, (rewards - mean) / (std + eps))


def pair_weights(similarity: Array, aligned: Array, weighting: PairWeighting) -> Array:
    """w_p: 1 for aligned pairs; for retrieved pairs sqrt(s), s or 1 by ``weighting``.

    similarity: float[P] in [0, 1]; aligned: bool[P]. Returns float32[P].
    """
    s = jnp.clip(similarity.astype(jnp.float32), 0.0, 1.0)
    retrieved = {
        PairWeighting.SQRT: jnp.sqrt(s),
        PairWeighting.LINEAR: s,
        PairWeighting.NONE: jnp.ones_like(s),
    }[weighting]
    return jnp.where(aligned, 1.0, retrieved)


def weighted_advantages(rewards: Array, weights: Array, eps: float = 1e-4, ddof: int = 1) -> Array:
    """Ã = w_p · A for one side: rewards float[P, K], weights float[P] → float32[P, K]."""
    return group_advantages(rewards, eps, ddof) * weights[:, None]
