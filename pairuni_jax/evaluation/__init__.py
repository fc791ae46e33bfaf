"""``pairuni eval``: multiple-choice accuracy and generation reward, standalone and in training.

``inputs`` reads questions (pair-format JSONL, VLMEvalKit TSV) and prompts; ``understanding`` and
``generation`` hold the two compiled programs and their batch loops; ``evaluator`` ties them to
one model; ``report`` summarises and writes the results; ``in_training`` is the trainer's hook
(run-config section ``eval``, ``config.EvalConfig``).
"""

from pairuni_jax.evaluation.config import EvalConfig
from pairuni_jax.evaluation.evaluator import EvalResult, EvalSettings, Evaluator
from pairuni_jax.evaluation.inputs import (
    InputError,
    Prompt,
    Question,
    build_question,
    read_prompts,
    read_questions,
)

__all__ = [
    "EvalConfig",
    "EvalResult",
    "EvalSettings",
    "Evaluator",
    "InputError",
    "Prompt",
    "Question",
    "build_question",
    "read_prompts",
    "read_questions",
]
