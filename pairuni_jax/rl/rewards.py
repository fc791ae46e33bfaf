"""The train step's reward functions, built from the reward registry and its weights.

The reward state (HPS model parameters and the option-letter table) is an argument of the
compiled step, never baked in as constants. HPS prompt features are computed in the graph once
per pair from ``hps_input_ids`` and shared by that pair's K_g images.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pairuni_jax.models.clip import CLIP
from pairuni_jax.rewards.accuracy import OptionLetterTable
from pairuni_jax.rewards.hps import prompt_features
from pairuni_jax.rewards.registry import (
    GenerationInputs,
    RewardWeights,
    UnderstandingInputs,
    generation_reward,
    understanding_reward,
)
from pairuni_jax.rl.train_step import Batch, GenerationRewardFn, UnderstandingRewardFn


def reward_state(
    hps_model: CLIP, letters: OptionLetterTable
) -> tuple[nnx.GraphDef, dict[str, Any]]:
    """(HPS graphdef, the pytree the step receives as ``reward_state``)."""
    graphdef, params = nnx.split(hps_model)
    return graphdef, {"hps": params, "letters": letters.arrays()}


def understanding_reward_fn(weights: RewardWeights) -> UnderstandingRewardFn:
    def fn(state: dict, completion: jax.Array, mask: jax.Array, batch: Batch, k: int):
        answer = jnp.repeat(batch["und_answer"], k)
        return understanding_reward(
            weights, UnderstandingInputs(completion, mask, answer, state["letters"])
        )

    return fn


def generation_reward_fn(weights: RewardWeights, hps_graphdef: nnx.GraphDef) -> GenerationRewardFn:
    def fn(state: dict, pixels: jax.Array, tokens: jax.Array, batch: Batch, k: int):
        hps = nnx.merge(hps_graphdef, state["hps"])
        text = jnp.repeat(prompt_features(hps, batch["hps_input_ids"]), k, axis=0)
        return generation_reward(weights, GenerationInputs(hps, pixels, text_features=text))

    return fn
