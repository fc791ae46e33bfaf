"""The clipped policy-gradient loss of Pair-GRPO, returned as (sum, denominator) pairs.

Shape letters: B trajectories (answers or images), T completion tokens.

Returning the unreduced sum and its denominator (instead of a mean) keeps gradient accumulation
exact: micro-batches add sums, and the step divides by the global denominator once.
"""

from __future__ import annotations

import dataclasses
import enum

import jax
import jax.numpy as jnp

Array = jax.Array


class Aggregation(enum.Enum):
    """How per-token losses become one number.

    ``token_mean``: Σ over all valid tokens of the batch / number of valid tokens (T2I-R1).
    ``sequence_mean``: mean over trajectories of each trajectory's token mean (ULM-R1).
    ``token_sum``: mean over trajectories of each trajectory's token sum (the equations as written).
    """

    TOKEN_MEAN = "token_mean"
    SEQUENCE_MEAN = "sequence_mean"
    TOKEN_SUM = "token_sum"


class KLEstimator(enum.Enum):
    K1 = "k1"  # logp − ref_logp
    K3 = "k3"  # exp(ref − logp) − (ref − logp) − 1


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The clipped policy objective (``grpo.loss`` in a run config).

    Attributes:
        epsilon: ε, the lower clip: the ratio ρ = π/π_old is clipped to [1 − ε, 1 + ε_high].
        epsilon_high: ε_high, the upper clip; None: symmetric (= ``epsilon``). DAPO's
            clip-higher uses a larger ε_high (e.g. 0.28).
        aggregation: how per-token losses become one number: ``token_mean`` (T2I-R1),
            ``sequence_mean`` (ULM-R1) or ``token_sum`` (see ``Aggregation``).
        kl_beta: β, the weight of the KL(π ‖ π_ref) penalty; 0 turns it off and keeps no
            reference copy of the params.
        kl_estimator: the per-token KL estimate from sampled-token log-probs: ``k1``
            (logp − ref) or ``k3`` (Schulman's, always ≥ 0).
    """

    epsilon: float = 0.2
    epsilon_high: float | None = None
    aggregation: Aggregation = Aggregation.TOKEN_MEAN
    kl_beta: float = 0.0
    kl_estimator: KLEstimator = KLEstimator.K3

    def __post_init__(self):
        if self.epsilon < 0 or (self.epsilon_high is not None and self.epsilon_high < 0):
            raise ValueError(f"clip epsilons must be >= 0, got {self.epsilon}, {self.epsilon_high}")
        if self.kl_beta < 0:
            raise ValueError(f"kl_beta must be >= 0, got {self.kl_beta}")


def kl_divergence(logp: Array, ref_logp: Array, estimator: KLEstimator) -> Array:
    """Per-token KL(π_θ ‖ π_ref) estimate from sampled-token log-probs."""
    if estimator is KLEstimator.K1:
        return logp - ref_logp
    delta = ref_logp - logp
    return jnp.exp(delta) - delta - 1.0


def aggregate(per_token: Array, mask: Array, aggregation: Aggregation) -> tuple[Array, Array]:
    """(sum, denominator) of per-token values [B, T] under ``mask`` [B, T]."""
    mask = mask.astype(jnp.float32)
    masked = per_token * mask
    if aggregation is Aggregation.TOKEN_MEAN:
        return masked.sum(), mask.sum()
    lengths = mask.sum(axis=1)
    has_tokens = (lengths > 0).astype(jnp.float32)
    if aggregation is Aggregation.SEQUENCE_MEAN:
        per_sequence = masked.sum(axis=1) / jnp.maximum(lengths, 1.0)
    else:
        per_sequence = masked.sum(axis=1)
    return (per_sequence * has_tokens).sum(), has_tokens.sum()


def policy_loss(
    logp: Array,
    old_logp: Array,
    advantages: Array,
    mask: Array,
    config: LossConfig,
    ref_logp: Array | None = None,
) -> dict[str, tuple[Array, Array]]:
    """Clipped surrogate −min(ρÃ, clip(ρ, 1−ε, 1+ε_high)Ã) (+ β·KL), aggregated.

    logp: float[B, T] current log-probs of the sampled tokens; old_logp: float[B, T] their
    log-probs at sampling time (no gradient); advantages: float[B] (Ã, one per trajectory);
    mask: bool[B, T] valid completion tokens; ref_logp: float[B, T], needed when β > 0.
    Returns {"loss", "clip_fraction", "kl"?: (sum, denominator)} with the configured aggregation
    for the loss and token means for the diagnostics.
    """
    logp = logp.astype(jnp.float32)
    old_logp = jax.lax.stop_gradient(old_logp.astype(jnp.float32))
    adv = advantages.astype(jnp.float32)[:, None]
    ratio = jnp.exp(jnp.clip(logp - old_logp, -20.0, 20.0))
    eps_high = config.epsilon if config.epsilon_high is None else config.epsilon_high
    clipped_ratio = jnp.clip(ratio, 1.0 - config.epsilon, 1.0 + eps_high)
    per_token = -jnp.minimum(ratio * adv, clipped_ratio * adv)
    out = {}
    if config.kl_beta > 0:
        if ref_logp is None:
            raise ValueError("kl_beta > 0 needs ref_logp")
        kl = kl_divergence(
            logp, jax.lax.stop_gradient(ref_logp.astype(jnp.float32)), config.kl_estimator
        )
        per_token = per_token + config.kl_beta * kl
        out["kl"] = aggregate(kl, mask, Aggregation.TOKEN_MEAN)
    out["loss"] = aggregate(per_token, mask, config.aggregation)
    # Clipping binds where the clipped term is the smaller one: there the token has no gradient.
    is_clipped = (clipped_ratio * adv < ratio * adv).astype(jnp.float32)
    out["clip_fraction"] = aggregate(
        jax.lax.stop_gradient(is_clipped), mask, Aggregation.TOKEN_MEAN
    )
    return out
