"""``pairuni train``: builds everything a run needs from a ``RunConfig`` and runs the step loop.

Reads top to bottom: ``setup`` (mesh, policy, reward model, tokenizers, data, optimizer, train
step, checkpoints, resume), then ``Trainer.run`` (step, log, sample, checkpoint; save and exit on
SIGTERM). The step itself is ``rl.train_step.TrainStep``.

On a pod every host runs this same program: ``jax.distributed.initialize()`` joins them, each host
feeds its shard of the pair file, and the global batch is assembled with
``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import yaml
from flax import nnx
from tqdm import tqdm

from pairuni_jax import config as config_lib
from pairuni_jax import flops, sharding
from pairuni_jax.checkpoint import convert as janus_convert
from pairuni_jax.checkpoint import model_dir
from pairuni_jax.data.pipeline import PairPipeline
from pairuni_jax.data.prompts import SpecialIds, load_tokenizer
from pairuni_jax.logging.curves import draw_run_curves
from pairuni_jax.logging.metrics import MetricsWriter, format_line
from pairuni_jax.logging.samples import save_answers, save_image_grid
from pairuni_jax.models.clip import CLIP, CLIPConfig
from pairuni_jax.models.janus import Janus, JanusConfig
from pairuni_jax.models.random_init import random_module
from pairuni_jax.rewards.accuracy import OptionLetterTable
from pairuni_jax.rewards.hps import load_reward_model
from pairuni_jax.rewards.registry import RewardWeights
from pairuni_jax.rl import optimizer as opt_lib
from pairuni_jax.rl import rewards as rl_rewards
from pairuni_jax.rl.rollout_data import StepSamples
from pairuni_jax.rl.train_step import TrainState, TrainStep, init_train_state
from pairuni_jax.rollout.image import ImageSettings
from pairuni_jax.rollout.text import TextSettings
from pairuni_jax.run_config import ASSETS, ModelSection, RewardSection, RunConfig

TINY_TOKENIZER = ASSETS / "tiny_tokenizer"
CLIP_TOKENIZER = ASSETS / "clip_tokenizer"
LINE_KEYS = ("und/reward_mean", "gen/reward_mean", "und/accuracy", "gen/hps", "grad_norm")


def is_lead() -> bool:
    return jax.process_index() == 0


def maybe_initialize_distributed(config: RunConfig) -> None:
    """Joins the hosts of a multi-host slice (TPU VMs set the coordinator environment)."""
    multi_host = any(k in os.environ for k in ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES"))
    if config.distributed or (config.distributed is None and multi_host):
        jax.distributed.initialize()


# -- the parts of a run --------------------------------------------------------------------------


def load_policy(
    section: ModelSection, mesh: jax.sharding.Mesh, run_dir: Path
) -> tuple[Janus, Path]:
    """The policy, sharded on ``mesh``, and the directory of its tokenizer files."""
    kw = dict(
        dtype=section.dtype.dtype,
        param_dtype=section.param_dtype.dtype,
        scan_layers=section.scan_layers,
        remat=section.remat,
    )
    if section.path is None:  # a random model (the demo)
        config = JanusConfig.preset(section.preset)
        model = random_module(
            lambda: Janus(config, rngs=nnx.Rngs(0), **kw), section.init_seed, mesh
        )
        return model, Path(section.tokenizer or TINY_TOKENIZER)
    source = Path(section.path).expanduser()
    try:
        model_dir.read_config(source)
        directory = source
    except model_dir.NotAModelDirError:  # a Hugging Face checkpoint: convert it once
        directory = run_dir / "model"
        if not directory.exists():
            print(f"converting {source} to {directory}", file=sys.stderr)
            janus_convert.hf_to_orbax(source, directory)
    model = janus_convert.load_model(directory, mesh, **kw)
    return model, Path(section.tokenizer or directory)


def load_hps(section: RewardSection, mesh: jax.sharding.Mesh) -> tuple[CLIP, Path]:
    """The frozen HPS model, sharded on ``mesh``, and the directory of its CLIP tokenizer."""
    dtype = section.dtype.dtype
    if section.path is None:
        model = random_module(
            lambda: CLIP(CLIPConfig.tiny(), dtype=dtype, rngs=nnx.Rngs(0)), section.init_seed, mesh
        )
        return model, Path(section.clip_tokenizer or CLIP_TOKENIZER)
    path = Path(section.path).expanduser()
    model = load_reward_model(path, mesh, dtype=dtype)
    return model, Path(section.clip_tokenizer or path)


def batch_sharding(mesh: jax.sharding.Mesh, global_pairs: int) -> jax.sharding.NamedSharding:
    """Pairs over (data, fsdp) when they divide; a single host may replicate a small batch."""
    spec = sharding.logical_to_spec(("batch",))
    ways = int(np.prod([mesh.shape[a] for a in ("data", "fsdp")]))
    if global_pairs % ways == 0:
        return jax.sharding.NamedSharding(mesh, spec)
    if jax.process_count() == 1:
        return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    raise ValueError(
        f"data.pairs_per_host × hosts = {global_pairs} pairs do not split over the "
        f"data × fsdp = {ways} batch shards of the mesh"
    )


def check_rollout_rows(config: RunConfig, mesh: jax.sharding.Mesh, global_pairs: int) -> None:
    ways = mesh.shape["data"] * mesh.shape["fsdp"]
    r = config.grpo.rollout
    for name, k in (
        ("num_und_rollouts", r.num_und_rollouts),
        ("num_gen_rollouts", r.num_gen_rollouts),
    ):
        rows = global_pairs * k
        if rows % ways:
            raise ValueError(
                f"{global_pairs} pairs × grpo.rollout.{name}={k} = {rows} rollout rows do not "
                f"split over the {ways} batch shards of the mesh"
            )
        if rows % config.grpo.micro_batches:
            raise ValueError(
                f"{rows} rollout rows do not split into grpo.micro_batches={config.grpo.micro_batches}"
            )


@dataclasses.dataclass
class Run:
    """Everything ``setup`` builds."""

    config: RunConfig
    run_dir: Path
    mesh: jax.sharding.Mesh
    step_fn: TrainStep
    state: TrainState
    pipeline: PairPipeline
    data_iter: Any
    batch_sharding: jax.sharding.NamedSharding
    checkpoints: ocp.CheckpointManager
    tokenizer: Any
    start_step: int
    step_flops: flops.StepFlops
    step_tokens: dict[str, int]
    peak_flops: float | None  # per chip, for MFU


def setup(config: RunConfig) -> Run:
    maybe_initialize_distributed(config)
    run_dir = Path(config.run_dir).absolute()
    if is_lead():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(
            yaml.safe_dump(config_lib.to_dict(config), sort_keys=False)
        )
    mesh = sharding.make_mesh(config.mesh)

    policy, tokenizer_dir = load_policy(config.model, mesh, run_dir)
    hps, clip_tokenizer_dir = load_hps(config.reward, mesh)
    tokenizer = load_tokenizer(tokenizer_dir)
    ids = SpecialIds.from_tokenizer(tokenizer)
    letters = OptionLetterTable.from_tokenizer(
        tokenizer,
        letters=config.reward.option_letters,
        answer_tag=tuple(config.reward.answer_tag) if config.reward.answer_tag else None,
        vocab_size=policy.config.text.vocab_size,
    )

    data_config = _data_for_model(config, policy.config)
    pipeline = PairPipeline(data_config, tokenizer, clip_tokenizer_dir)
    global_pairs = data_config.pairs_per_host * jax.process_count()
    check_rollout_rows(config, mesh, global_pairs)

    opt_config = config.optimizer
    optimizer = opt_lib.make_optimizer(opt_config)
    graphdef, state = init_train_state(policy, config.grpo, optimizer)
    state = jax.device_put(state, sharding.tree_shardings(state, mesh))
    hps_graphdef, reward_state = rl_rewards.reward_state(hps, letters)
    step_fn = make_train_step(config, graphdef, optimizer, hps_graphdef, reward_state, ids)
    shapes = flops.StepShapes.from_run_config(config, global_pairs)
    chip = flops.chip_for_device_kind(jax.devices()[0].device_kind)
    peak = config.logging.peak_tflops * 1e12 if config.logging.peak_tflops else None
    peak = peak or (chip.peak_flops if chip else None)

    checkpoints = ocp.CheckpointManager(
        run_dir / "checkpoints",
        options=ocp.CheckpointManagerOptions(
            max_to_keep=config.checkpoint.keep,
            enable_async_checkpointing=config.checkpoint.async_save,
        ),
    )
    data_iter = pipeline.iterator()
    start_step = 0
    latest = checkpoints.latest_step()
    if latest is not None:
        state, data_state = restore_checkpoint(checkpoints, latest, state)
        data_iter.set_state(data_state)
        start_step = latest
        if is_lead():
            print(f"resumed from {run_dir / 'checkpoints'} at step {latest}", file=sys.stderr)
    return Run(
        config,
        run_dir,
        mesh,
        step_fn,
        state,
        pipeline,
        data_iter,
        batch_sharding(mesh, global_pairs),
        checkpoints,
        tokenizer,
        start_step,
        flops.step_flops(shapes, policy.config, hps.config),
        flops.step_tokens(shapes, policy.config),
        peak,
    )


def make_train_step(
    config: RunConfig,
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    hps_graphdef: nnx.GraphDef,
    reward_state: Any,
    ids: SpecialIds,
) -> TrainStep:
    """The Pair-GRPO step of ``config`` for a policy ``graphdef`` (from ``init_train_state``).

    ``reward_state`` may be concrete or abstract (``jax.ShapeDtypeStruct`` leaves): ``pairuni
    plan`` builds this same step without weights and only lowers it.
    """
    weights = RewardWeights(
        understanding=config.reward.understanding, generation=config.reward.generation
    )
    r = config.grpo.rollout
    return TrainStep(
        graphdef,
        config.grpo,
        optimizer,
        TextSettings(
            eos_id=ids.eos,
            pad_id=ids.pad,
            max_new_tokens=r.max_new_tokens,
            temperature=r.text_temperature,
            top_k=r.top_k,
            top_p=r.top_p,
        ),
        ImageSettings(
            pad_id=ids.pad,
            cfg_weight=r.cfg_weight,
            temperature=r.image_temperature,
            cache_segments=r.image_cache_segments,
        ),
        rl_rewards.understanding_reward_fn(weights),
        rl_rewards.generation_reward_fn(weights, hps_graphdef),
        reward_state,
        learning_rate=opt_lib.learning_rate_schedule(config.optimizer),
    )


def _data_for_model(config: RunConfig, model_config: JanusConfig):
    """The data config, checked against the image size and token count the model needs."""
    wanted = {
        "image_size": model_config.vision.image_size,
        "num_image_tokens": model_config.num_image_tokens,
    }
    for name, value in wanted.items():
        if getattr(config.data, name) != value:
            raise ValueError(
                f"data.{name} = {getattr(config.data, name)}, but the model needs {value}"
            )
    return dataclasses.replace(config.data, path=str(Path(config.data.path).expanduser()))


# -- checkpoints ---------------------------------------------------------------------------------


def _saved_state(state: TrainState) -> dict[str, Any]:
    """What a train checkpoint holds: the trainable params, the optimizer state and the step
    (frozen params come back from the model source, the reference copy from the params)."""
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


def save_checkpoint(
    manager: ocp.CheckpointManager, step: int, state: TrainState, data_state: Any
) -> None:
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(_saved_state(state)),
            data=ocp.args.JsonSave(data_state),
        ),
    )


def restore_checkpoint(
    manager: ocp.CheckpointManager, step: int, state: TrainState
) -> tuple[TrainState, Any]:
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), _saved_state(state)
    )
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()
        ),
    )
    saved = restored["state"]
    ref = state.ref_params
    if ref is not None:  # the KL reference is the initial policy, not the resumed one
        ref = jax.tree.map(jnp.copy, state.ref_params)
    return (
        state.replace(
            step=saved["step"], params=saved["params"], opt_state=saved["opt_state"], ref_params=ref
        ),
        restored["data"],
    )


# -- the loop ------------------------------------------------------------------------------------


class Trainer:
    def __init__(self, config: RunConfig):
        self.run = setup(config)
        self.stop_requested = False

    def _request_stop(self, signum, frame) -> None:
        self.stop_requested = True

    def run_steps(self) -> list[dict[str, float]]:
        """Runs to ``config.steps`` (or until SIGTERM); returns the logged metrics."""
        run, config = self.run, self.run.config
        writer = MetricsWriter(
            run.run_dir,
            is_lead=is_lead(),
            tensorboard=config.logging.tensorboard,
            start_step=run.start_step + 1 if run.start_step else None,
            wandb=config.logging.wandb,
            config=config_lib.to_dict(config),
        )
        previous = signal.signal(signal.SIGTERM, self._request_stop)
        rng = jax.random.key(config.seed)
        history: list[dict[str, float]] = []
        state, step = run.state, run.start_step
        bar = tqdm(
            total=config.steps, initial=step, desc="train", unit="step", disable=not is_lead()
        )
        try:
            with jax.set_mesh(run.mesh):
                while step < config.steps and not self.stop_requested:
                    batch = self._next_batch()
                    start = time.perf_counter()
                    state, metrics, samples = run.step_fn(state, batch, rng)
                    step += 1
                    if step % config.logging.every == 0 or step == config.steps:
                        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                        values["step_seconds"] = time.perf_counter() - start
                        sampled = values["und/tokens_sampled"] + values["gen/tokens_sampled"]
                        tokens = {"sampled": sampled, "trained": run.step_tokens["trained"]}
                        values.update(
                            flops.perf_metrics(
                                run.step_flops,
                                tokens,
                                values["step_seconds"],
                                jax.device_count(),
                                run.peak_flops,
                            )
                        )
                        values["data/skipped_records"] = float(run.pipeline.report.skipped)
                        history.append({"step": step, **values})
                        writer.write(step, values)
                        bar.set_postfix_str(format_line(step, values, keys=LINE_KEYS))
                    if config.logging.samples_every and (
                        step == 1 or step % config.logging.samples_every == 0
                    ):  # the first grid shows where the run starts
                        self._write_samples(step, batch, samples, writer)
                    if (
                        step % config.checkpoint.every == 0
                        or step == config.steps
                        or self.stop_requested
                    ):
                        save_checkpoint(run.checkpoints, step, state, run.data_iter.get_state())
                        if is_lead():
                            draw_run_curves(run.run_dir)
                    bar.update()
        finally:
            bar.close()
            run.checkpoints.wait_until_finished()
            writer.close()
            signal.signal(signal.SIGTERM, previous)
        run.state = state
        if is_lead():
            report = run.pipeline.report
            print(
                f"done at step {step}; skipped records: {report.skipped} {dict(report.errors_by_kind)}",
                file=sys.stderr,
            )
        return history

    def _next_batch(self) -> dict[str, jax.Array]:
        local = next(self.run.data_iter)
        sharding_ = self.run.batch_sharding
        return {
            k: jax.make_array_from_process_local_data(sharding_, np.asarray(v))
            for k, v in local.items()
        }

    def _write_samples(
        self, step: int, batch: dict, samples: StepSamples, writer: MetricsWriter
    ) -> None:
        if not is_lead():
            return
        samples = jax.device_get(samples)
        record = self.run.pipeline.record(
            int(np.asarray(batch["record_index"].addressable_data(0))[0])
        )
        prompt = record.generate.prompt
        captions = [f"{prompt} | hps {r:.3f}" for r in samples.image_rewards]
        directory = self.run.run_dir / "samples"
        directory.mkdir(exist_ok=True)
        grid = save_image_grid(directory / f"step_{step:06d}.png", samples.images, captions)
        writer.image(step, "samples/images", grid)
        answers = []
        for tokens, mask, reward in zip(
            samples.answers, samples.answer_mask, samples.answer_rewards
        ):
            text = self.run.tokenizer.decode(tokens[mask], skip_special_tokens=True)
            answers.append(
                {
                    "question": record.understand.question,
                    "answer": text,
                    "expected": record.understand.answer,
                    "reward": float(reward),
                }
            )
        save_answers(directory / f"step_{step:06d}_answers.txt", answers)


def train(config: RunConfig) -> list[dict[str, float]]:
    return Trainer(config).run_steps()
