"""Rewards computed inside the train step: HPSv2 on generated pixels, answer accuracy on tokens.

In-graph: ``hps.hps_score``, ``accuracy.accuracy_reward`` / ``format_reward``, and the weighted
combinations of ``registry``. Host side, once at start-up: ``accuracy.OptionLetterTable``
(from the policy tokenizer), ``hps.load_reward_model`` and ``clip_text`` (CLIP tokenizer, prompt
ids, precomputed prompt features).
"""

from pairuni_jax.rewards.accuracy import (
    LetterTableArrays,
    OptionLetterTable,
    accuracy_reward,
    answer_letter,
    format_reward,
)
from pairuni_jax.rewards.hps import hps_score, load_reward_model, prompt_features
from pairuni_jax.rewards.preprocess import janus_to_clip
from pairuni_jax.rewards.registry import (
    GenerationInputs,
    RewardWeights,
    UnderstandingInputs,
    generation_reward,
    understanding_reward,
)

__all__ = [
    "GenerationInputs",
    "LetterTableArrays",
    "OptionLetterTable",
    "RewardWeights",
    "UnderstandingInputs",
    "accuracy_reward",
    "answer_letter",
    "format_reward",
    "generation_reward",
    "hps_score",
    "janus_to_clip",
    "load_reward_model",
    "prompt_features",
    "understanding_reward",
]
