"""Supervised warm start of a Janus policy on pairs (``pairuni sft``).

Teacher-forced on both sides of each pair: the understanding answer (the option letter, then
EOS) after its image and question, and the generation side's image, as VQ tokens, after its
prompt. A ``uncond_fraction`` of the generation rows see the unconditional prompt instead
(``[BOS, PAD…, <begin_of_image>]``, as the CFG sampler builds it), so that guidance has an
unconditional branch to contrast. The loss is

    w_u · mean NLL(answer tokens) + w_g · mean NLL(image tokens, both kinds of prompt).

The VQ model is frozen: it is the tokenizer the image targets come from. The same log-prob
functions score rollouts in the Pair-GRPO step (``rl.policy``), at temperature 1.

Shape letters: P pairs, S understanding prompt length, N answer tokens, I image tokens.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from pairuni_jax import sharding
from pairuni_jax.checkpoint import convert as janus_convert
from pairuni_jax.config import ConfigError
from pairuni_jax.data.pipeline import DataConfig, PairPipeline
from pairuni_jax.data.prompts import SpecialIds, load_tokenizer
from pairuni_jax.rl import optimizer as opt_lib
from pairuni_jax.rl.policy import ImageLogprob, answer_logprobs, image_logprobs
from pairuni_jax.rl.train_step import TrainState, new_state
from pairuni_jax.rollout.image import unconditional_prompt
from pairuni_jax.run_config import ModelSection, demo_data
from pairuni_jax.sharding import MeshConfig

Array = jax.Array
Batch = dict[str, Array]


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """The supervised step.

    understanding_weight, generation_weight: w_u, w_g.
    uncond_fraction: share of generation rows trained on the unconditional prompt.
    frozen_modules: Janus sub-modules without gradient (the VQ tokenizer by default).
    option_letters: answer letters in answer-index order (``und_answer`` indexes them).
    logprob_chunk: positions per chunk of the vocabulary projection (memory bound).
    """

    understanding_weight: float = 1.0
    generation_weight: float = 1.0
    uncond_fraction: float = 0.1
    frozen_modules: tuple[str, ...] = ("vqmodel",)
    option_letters: str = "ABCDEFGH"
    logprob_chunk: int = 128

    def __post_init__(self):
        if not 0.0 <= self.uncond_fraction < 1.0:
            raise ValueError(f"uncond_fraction must be in [0, 1), got {self.uncond_fraction}")
        if min(self.understanding_weight, self.generation_weight) < 0:
            raise ValueError("understanding_weight and generation_weight must be >= 0")


def answer_targets(tokenizer: Any, letters: str) -> tuple[np.ndarray, np.ndarray]:
    """What each option letter's answer is: its tokens then EOS, int32[L, N] and bool[L, N]
    (N = the longest; shorter answers padded and masked)."""
    rows = [
        [*tokenizer(letter, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
        for letter in letters
    ]
    width = max(map(len, rows))
    ids = np.full((len(rows), width), tokenizer.pad_token_id, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, True
    return ids, mask


def _mean(values: Array, mask: Array) -> Array:
    mask = mask.astype(jnp.float32)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


class SFTStep:
    """``SFTStep(...)(state, batch, rng) -> (state, metrics)``: one jitted supervised update,
    state donated. ``batch`` is a pipeline batch with ``gen_pixel_values``
    (``DataConfig.generation_images``)."""

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        config: SFTConfig,
        optimizer: optax.GradientTransformation,
        answer_ids: np.ndarray,
        answer_mask: np.ndarray,
        pad_id: int,
        learning_rate: optax.Schedule | None = None,
    ):
        self.graphdef = graphdef
        self.config = config
        self.optimizer = optimizer
        self.answer_ids = jnp.asarray(answer_ids)
        self.answer_mask = jnp.asarray(answer_mask)
        self.pad_id = pad_id
        self.learning_rate = learning_rate
        self.jitted = jax.jit(self._step, donate_argnums=(0,))

    def __call__(self, state: TrainState, batch: Batch, rng: Array):
        return self.jitted(state, batch, rng)

    def loss(self, params: nnx.State, frozen: nnx.State, batch: Batch, rng: Array):
        """(loss, metrics) of one batch; differentiable in ``params``."""
        c = self.config
        model = nnx.merge(self.graphdef, params, frozen)
        completion = self.answer_ids[batch["und_answer"]]
        completion_mask = self.answer_mask[batch["und_answer"]]
        und_logp, _ = answer_logprobs(
            model,
            batch["und_input_ids"],
            batch["und_attention_mask"],
            batch["und_pixel_values"],
            completion,
            completion_mask,
            1.0,
            c.logprob_chunk,
        )
        tokens = jax.lax.stop_gradient(model.encode_images(batch["gen_pixel_values"]))
        prompt_ids, prompt_mask = batch["gen_input_ids"], batch["gen_attention_mask"]
        drop = jax.random.uniform(rng, (prompt_ids.shape[0], 1)) < c.uncond_fraction
        prompt_ids = jnp.where(
            drop, unconditional_prompt(prompt_ids, prompt_mask, self.pad_id), prompt_ids
        )
        gen_logp, _ = image_logprobs(
            model,
            prompt_ids,
            prompt_mask,
            tokens,
            ImageLogprob.CONDITIONAL,
            1.0,
            1.0,
            self.pad_id,
            c.logprob_chunk,
        )
        und_nll = -_mean(und_logp, completion_mask)
        dropped = jnp.broadcast_to(drop, gen_logp.shape)
        gen_all = -jnp.mean(gen_logp)  # conditional and unconditional rows alike
        loss = c.understanding_weight * und_nll + c.generation_weight * gen_all
        metrics = {
            "loss": loss,
            "und/nll": und_nll,
            "gen/nll": -_mean(gen_logp, ~dropped),
            "gen/uncond_nll": -_mean(gen_logp, dropped),
            # The probability of sampling the right letter first: expected accuracy at T = 1.
            "und/answer_prob": jnp.mean(jnp.exp(und_logp[:, 0])),
        }
        return loss, metrics

    def _step(self, state: TrainState, batch: Batch, rng: Array):
        rng = jax.random.fold_in(rng, state.step)
        grad_fn = jax.grad(self.loss, has_aux=True)
        grads, metrics = grad_fn(state.params, state.frozen, batch, rng)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        metrics["grad_norm"] = optax.tree.norm(grads)
        if self.learning_rate is not None:
            metrics["learning_rate"] = jnp.asarray(self.learning_rate(state.step), jnp.float32)
        params = optax.apply_updates(state.params, updates)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


# -- pairuni sft ---------------------------------------------------------------------------------


def _sft_data() -> DataConfig:
    return dataclasses.replace(demo_data(), generation_images=True)


@dataclasses.dataclass(frozen=True)
class SFTRunConfig:
    """``pairuni sft``: ``steps`` supervised updates of ``model`` on ``data``, written as a model
    directory to ``out``. The defaults warm-start a random tiny Janus on the demo pairs."""

    out: str = "runs/tiny_sft"
    steps: int = 500
    seed: int = 0
    log_every: int = 50
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    data: DataConfig = dataclasses.field(default_factory=_sft_data)
    sft: SFTConfig = dataclasses.field(default_factory=SFTConfig)
    optimizer: opt_lib.OptimizerConfig = dataclasses.field(
        default_factory=lambda: opt_lib.OptimizerConfig(learning_rate=1e-3, total_steps=500)
    )
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not self.data.generation_images:
            raise ValueError("data.generation_images must be true: the image targets come from it")


def run_sft(config: SFTRunConfig, overwrite: bool = False) -> list[dict[str, float]]:
    """Runs ``config`` and writes ``config.out``; returns the logged metrics."""
    from pairuni_jax.train import batch_sharding, load_policy

    out = Path(config.out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; choose a new path or pass --overwrite")
    if config.model.path is not None:
        janus_convert.read_model_config(config.model.path)  # an Orbax Janus directory, or say so
    mesh = sharding.make_mesh(config.mesh)
    policy, tokenizer_dir = load_policy(config.model, mesh, out.parent)
    tokenizer = load_tokenizer(tokenizer_dir)
    ids = SpecialIds.from_tokenizer(tokenizer)
    # The image targets are VQ tokens: load the generation images at the VQ's size.
    vq_size = policy.config.vq.image_size
    if config.data.generation_image_size not in (None, vq_size):
        raise ConfigError(
            f"data.generation_image_size = {config.data.generation_image_size}, but the "
            f"model's VQ encodes {vq_size} px images"
        )
    data_config = dataclasses.replace(config.data, generation_image_size=vq_size)
    pipeline = PairPipeline(data_config, tokenizer, _no_hps_tokens)
    optimizer = opt_lib.make_optimizer(config.optimizer)
    graphdef, state = new_state(policy, config.sft.frozen_modules, optimizer)
    state = jax.device_put(state, sharding.tree_shardings(state, mesh))
    step_fn = SFTStep(
        graphdef,
        config.sft,
        optimizer,
        *answer_targets(tokenizer, config.sft.option_letters),
        ids.pad,
        opt_lib.learning_rate_schedule(config.optimizer),
    )
    shard = batch_sharding(mesh, config.data.pairs_per_host * jax.process_count())
    data = pipeline.iterator()
    rng = jax.random.key(config.seed)
    history = []
    bar = tqdm(range(1, config.steps + 1), desc="sft", unit="step")
    with jax.set_mesh(mesh):
        for step in bar:
            batch = {
                k: jax.make_array_from_process_local_data(shard, np.asarray(v))
                for k, v in next(data).items()
            }
            state, metrics = step_fn(state, batch, rng)
            if step % config.log_every == 0 or step == config.steps:
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                history.append({"step": step, **values})
                bar.set_postfix({k: f"{values[k]:.3g}" for k in ("und/nll", "gen/nll")})
    policy = nnx.merge(graphdef, state.params, state.frozen)
    janus_convert.save_model(
        policy, out, tokenizer_dir=tokenizer_dir, source="pairuni sft", overwrite=overwrite
    )
    print(f"wrote {out}", file=sys.stderr)
    return history


def _no_hps_tokens(texts):
    """SFT needs no HPS prompt ids; the pipeline still fills the field (zeros)."""
    return np.zeros((len(texts), 77), np.int32)
