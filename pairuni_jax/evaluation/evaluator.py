"""One evaluation set-up, built once and run on any weights of the same model: the questions and
prompts tokenized, the two programs compiled on first use. ``pairuni eval`` runs it once; the
trainer runs it every ``eval.every`` steps on the current policy (no recompilation)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from flax import nnx

from pairuni_jax.data.pipeline import HpsTokenize
from pairuni_jax.data.prompts import PromptEncoder
from pairuni_jax.evaluation import report as report_lib
from pairuni_jax.evaluation.batching import DEFAULT_PLACEMENT, Placement, Throughput
from pairuni_jax.evaluation.generation import (
    GeneratedImage,
    ImageProgram,
    ImageSink,
    PromptSet,
    generate_images,
)
from pairuni_jax.evaluation.inputs import Prompt, Question
from pairuni_jax.evaluation.understanding import (
    Answer,
    AnswerProgram,
    QuestionSet,
    answer_questions,
)
from pairuni_jax.models.janus import JanusConfig
from pairuni_jax.rewards.accuracy import OptionLetterTable
from pairuni_jax.rollout.image import ImageSettings
from pairuni_jax.rollout.text import TextSettings


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """How to evaluate.

    max_new_tokens: answer length buffer (``pairuni answer``'s default, 64).
    batch_size: questions per batch; for generation, images per batch (``batch_size // K``
      prompts, at least one).
    images_per_prompt: K. cfg_weight, temperature: the image sampling (training's defaults).
    image_cache_segments: ``ImageSettings.cache_segments``.
    seed: the image sampling seed (answers are greedy).
    """

    max_new_tokens: int = 64
    batch_size: int = 8
    images_per_prompt: int = 4
    cfg_weight: float = 5.0
    temperature: float = 1.0
    image_cache_segments: int = 4
    seed: int = 0

    def __post_init__(self):
        for name in ("max_new_tokens", "batch_size", "images_per_prompt"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.temperature < math.inf:  # checked before any model loads
            raise ValueError(f"temperature must be finite and > 0, got {self.temperature}")

    @property
    def prompts_per_batch(self) -> int:
        return max(1, self.batch_size // self.images_per_prompt)


@dataclasses.dataclass
class EvalResult:
    """Everything one run produced: the per-item results, their summaries and throughputs."""

    answers: list[Answer]
    images: list[GeneratedImage]
    understanding: dict[str, Any] | None
    generation: dict[str, Any] | None
    answer_speed: Throughput | None
    image_speed: Throughput | None


class Evaluator:
    """Evaluates a Janus policy on ``questions`` and / or ``prompts``.

    graphdef: the policy's graph (``run`` takes the matching states); model_config: its config.
    letters: the option-letter table of the policy tokenizer (answer tags included).
    hps_graphdef, hps_tokenize: the HPS reward model's graph and prompt tokenizer, or None.
    skipped_*: how many bad inputs were left out (reported).
    """

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        model_config: JanusConfig,
        encoder: PromptEncoder,
        letters: OptionLetterTable,
        settings: EvalSettings,
        *,
        questions: Sequence[Question] = (),
        prompts: Sequence[Prompt] = (),
        hps_graphdef: nnx.GraphDef | None = None,
        hps_tokenize: HpsTokenize | None = None,
        placement: Placement = DEFAULT_PLACEMENT,
        skipped_questions: int = 0,
        skipped_prompts: int = 0,
        show_progress: bool = True,
    ):
        self.settings = settings
        self.letters = letters
        self.show_progress = show_progress
        self.skipped = (skipped_questions, skipped_prompts)
        ids = encoder.ids
        self.questions = self.answer_program = self.prompts = self.image_program = None
        if questions:
            self.questions = QuestionSet(
                questions,
                encoder,
                model_config.vision.image_size,
                settings.max_new_tokens,
                model_config.text.max_position_embeddings,
            )
            text = TextSettings(ids.eos, ids.pad, max_new_tokens=settings.max_new_tokens)
            self.answer_program = AnswerProgram(graphdef, text, ids.image, placement)
        if prompts:
            self.prompts = PromptSet(prompts, encoder, hps_tokenize if hps_graphdef else None)
            image = ImageSettings(
                ids.pad,
                cfg_weight=settings.cfg_weight,
                temperature=settings.temperature,
                samples_per_prompt=settings.images_per_prompt,
                cache_segments=settings.image_cache_segments,
            )
            self.image_program = ImageProgram(graphdef, image, hps_graphdef, placement)

    def run(
        self,
        states: tuple[nnx.State, ...],
        hps_params: Any = None,
        sink: ImageSink | None = None,
    ) -> EvalResult:
        """Answers every question and draws every prompt's images (each handed to ``sink``)."""
        s = self.settings
        answers, images, und, gen, answer_speed, image_speed = [], [], None, None, None, None
        if self.questions is not None:
            answers, answer_speed = answer_questions(
                self.answer_program,
                states,
                self.letters,
                self.questions,
                batch_size=s.batch_size,
                show_progress=self.show_progress,
            )
            und = report_lib.understanding_summary(answers, self.skipped[0])
        if self.prompts is not None:
            images, image_speed = generate_images(
                self.image_program,
                states,
                hps_params,
                self.prompts,
                prompts_per_batch=s.prompts_per_batch,
                seed=s.seed,
                sink=sink,
                show_progress=self.show_progress,
            )
            gen = report_lib.generation_summary(images, s.images_per_prompt, self.skipped[1])
        return EvalResult(answers, images, und, gen, answer_speed, image_speed)

    def compiled_programs(self) -> int:
        """Programs compiled so far over both sides (one each once run: fixed shapes)."""
        programs = (self.answer_program, self.image_program)
        return sum(p.compiled_programs() for p in programs if p is not None)
