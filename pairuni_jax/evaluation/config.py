"""The ``eval`` section of a run config: evaluating the policy while it trains."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Every ``every`` steps the trainer evaluates the current policy and logs ``eval/...``
    metrics (``metrics.jsonl``, TensorBoard); the eval programs are compiled once.

    every: steps between evaluations; 0 turns evaluation off.
    understanding: a questions file (``.jsonl`` or VLMEvalKit ``.tsv``, see
      ``evaluation.inputs``), or None.
    generation: a prompts file (``.jsonl`` or text), or None; scored with the run's HPS model.
    images_per_prompt: K images per prompt (CFG weight and temperature: ``grpo.rollout``'s).
    max_questions, max_prompts: evaluate only the first N valid entries (None: all).
    batch_size: questions per batch; images per batch for generation.
    max_new_tokens: answer length (None: ``grpo.rollout.max_new_tokens``).
    image_root: where relative question image paths resolve (default: the file's directory).
    """

    every: int = 0
    understanding: str | None = None
    generation: str | None = None
    images_per_prompt: int = 2
    max_questions: int | None = None
    max_prompts: int | None = None
    batch_size: int = 8
    max_new_tokens: int | None = None
    image_root: str | None = None

    def __post_init__(self):
        if self.every < 0:
            raise ValueError(f"every must be >= 0 (0: off), got {self.every}")
        if self.every and not (self.understanding or self.generation):
            raise ValueError("every > 0 needs an understanding or a generation file")
        for name in ("images_per_prompt", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_questions", "max_prompts", "max_new_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or null, got {value}")
