"""Evaluation during training: the trainer's one hook.

``TrainingEval.from_run`` reads the run config's ``eval`` section at start-up (bad eval files stop
the run before its first step) and builds one ``Evaluator`` on the training mesh, with the run's
tokenizer, system prompt, answer letters, rollout settings and HPS model. Every ``eval.every``
steps the trainer calls it on the current train state and writes the returned ``eval/...``
metrics (lead host). It reads no training randomness and no data, so a resumed run evaluates
exactly as the uninterrupted one.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flax import nnx
from jax.sharding import Mesh
from tqdm import tqdm

from pairuni_jax.data.pipeline import HpsTokenize
from pairuni_jax.data.prompts import PromptEncoder
from pairuni_jax.evaluation.batching import Placement
from pairuni_jax.evaluation.config import EvalConfig
from pairuni_jax.evaluation.evaluator import EvalSettings, Evaluator
from pairuni_jax.evaluation.inputs import read_prompts, read_questions
from pairuni_jax.evaluation.report import training_metrics
from pairuni_jax.models.janus import JanusConfig
from pairuni_jax.rewards.accuracy import OptionLetterTable

if TYPE_CHECKING:
    from pairuni_jax.rl.train_step import TrainState
    from pairuni_jax.run_config import RunConfig


class TrainingEval:
    """``due(step)``, then ``metrics = evaluator(state)``."""

    def __init__(
        self, config: EvalConfig, evaluator: Evaluator, hps_params: Any, verbose: bool = True
    ):
        self.config = config
        self.evaluator = evaluator
        self.hps_params = hps_params
        self.verbose = verbose

    @classmethod
    def from_run(
        cls,
        config: RunConfig,
        *,
        mesh: Mesh,
        graphdef: nnx.GraphDef,
        model_config: JanusConfig,
        tokenizer: Any,
        letters: OptionLetterTable,
        hps_graphdef: nnx.GraphDef,
        hps_params: Any,
        hps_tokenize: HpsTokenize,
        verbose: bool = True,
    ) -> TrainingEval | None:
        """The evaluation of ``config.eval`` (None when ``eval.every`` is 0)."""
        section = config.eval
        if not section.every:
            return None
        questions = prompts = ()
        if section.understanding:
            questions, _ = read_questions(
                Path(section.understanding).expanduser(),
                image_root=section.image_root,
                limit=section.max_questions,
            )
        if section.generation:
            prompts, _ = read_prompts(
                Path(section.generation).expanduser(), limit=section.max_prompts
            )
        rollout = config.grpo.rollout
        settings = EvalSettings(
            max_new_tokens=section.max_new_tokens or rollout.max_new_tokens,
            batch_size=section.batch_size,
            images_per_prompt=section.images_per_prompt,
            cfg_weight=rollout.cfg_weight,
            temperature=rollout.image_temperature,
            image_cache_segments=rollout.image_cache_segments,
            seed=config.seed,
        )
        encoder = PromptEncoder(tokenizer, model_config.num_image_tokens, config.data.system_prompt)
        evaluator = Evaluator(
            graphdef,
            model_config,
            encoder,
            letters,
            settings,
            questions=questions,
            prompts=prompts,
            hps_graphdef=hps_graphdef,
            hps_tokenize=hps_tokenize,
            placement=Placement(mesh),
            show_progress=verbose,
        )
        return cls(section, evaluator, hps_params, verbose)

    def due(self, step: int) -> bool:
        return step % self.config.every == 0

    def __call__(self, state: TrainState) -> dict[str, float]:
        """Evaluates the policy of ``state``; returns the ``eval/...`` metrics."""
        result = self.evaluator.run((state.params, state.frozen), self.hps_params)
        metrics = training_metrics(result.understanding, result.generation)
        if self.verbose:
            speeds = [
                speed.line(unit)
                for speed, unit in (
                    (result.answer_speed, "question"),
                    (result.image_speed, "image"),
                )
                if speed is not None
            ]
            tqdm.write(f"eval at step {int(state.step)}: {'; '.join(speeds)}", file=sys.stderr)
        return metrics
