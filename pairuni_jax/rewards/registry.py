"""Rewards by name, with weights: what a run config chooses.

Each side of a pair has its own rewards (Pair-GRPO normalises each side's rewards separately;
spec/pair_grpo.md §2): understanding rewards read ``UnderstandingInputs``, generation rewards
read ``GenerationInputs``. A side's reward is the weighted sum of the rewards named in its
weights; a reward listed with weight 0 is still computed and reported (as a metric).

    weights = RewardWeights(understanding={"accuracy": 1.0, "format": 0.0},
                            generation={"hps": 1.0})
    total, parts = understanding_reward(weights, inputs)   # float32[B], {name: float32[B]}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from pairuni_jax.models.clip import CLIP
from pairuni_jax.rewards.accuracy import LetterTableArrays, accuracy_reward, format_reward
from pairuni_jax.rewards.hps import hps_score


class UnderstandingInputs(NamedTuple):
    """completion_ids int32[B, T], completion_mask bool[B, T], answer_index int32[B]."""

    completion_ids: jax.Array
    completion_mask: jax.Array
    answer_index: jax.Array
    letters: LetterTableArrays


class GenerationInputs(NamedTuple):
    """pixels float[B, S, S, 3] in [-1, 1]; prompt as text_features [B, D] or text_ids [B, 77]."""

    hps_model: CLIP
    pixels: jax.Array
    text_features: jax.Array | None = None
    text_ids: jax.Array | None = None


def _accuracy(x: UnderstandingInputs) -> jax.Array:
    return accuracy_reward(
        x.letters.table,
        x.completion_ids,
        x.completion_mask,
        x.answer_index,
        open_tag=x.letters.open_tag,
    )


def _format(x: UnderstandingInputs) -> jax.Array:
    return format_reward(
        x.letters.table,
        x.completion_ids,
        x.completion_mask,
        open_tag=x.letters.open_tag,
        close_tag=x.letters.close_tag,
    )


def _hps(x: GenerationInputs) -> jax.Array:
    return hps_score(x.hps_model, x.pixels, text_features=x.text_features, text_ids=x.text_ids)


UNDERSTANDING_REWARDS: Mapping[str, Callable[[UnderstandingInputs], jax.Array]] = MappingProxyType(
    {"accuracy": _accuracy, "format": _format}
)
GENERATION_REWARDS: Mapping[str, Callable[[GenerationInputs], jax.Array]] = MappingProxyType(
    {"hps": _hps}
)


@dataclasses.dataclass(frozen=True)
class RewardWeights:
    """Reward name -> weight for each side; names must be registered above."""

    understanding: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"accuracy": 1.0, "format": 0.0}
    )
    generation: Mapping[str, float] = dataclasses.field(default_factory=lambda: {"hps": 1.0})

    def __post_init__(self) -> None:
        for side, weights, registry in (
            ("understanding", self.understanding, UNDERSTANDING_REWARDS),
            ("generation", self.generation, GENERATION_REWARDS),
        ):
            if not weights:
                raise ValueError(f"RewardWeights.{side}: name at least one reward")
            if unknown := sorted(set(weights) - set(registry)):
                raise ValueError(
                    f"RewardWeights.{side}: unknown rewards {unknown}; "
                    f"registered: {sorted(registry)}"
                )
            if bad := {k: w for k, w in weights.items() if not isinstance(w, int | float)}:
                raise ValueError(f"RewardWeights.{side}: weights must be numbers, got {bad}")


def understanding_reward(
    weights: RewardWeights, inputs: UnderstandingInputs
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted understanding reward float32[B] and each named reward float32[B]."""
    return _weighted(weights.understanding, UNDERSTANDING_REWARDS, inputs)


def generation_reward(
    weights: RewardWeights, inputs: GenerationInputs
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted generation reward float32[B] and each named reward float32[B]."""
    return _weighted(weights.generation, GENERATION_REWARDS, inputs)


def _weighted(
    weights: Mapping[str, float], registry: Mapping[str, Callable[[Any], jax.Array]], inputs: Any
) -> tuple[jax.Array, dict[str, jax.Array]]:
    parts = {name: registry[name](inputs) for name in weights}
    total = sum(jnp.float32(w) * parts[name] for name, w in weights.items())
    return total, parts
