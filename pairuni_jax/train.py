"""``pairuni train``: builds everything a run needs from a ``RunConfig`` and runs the step loop.

Reads top to bottom: ``setup`` (mesh, policy, reward model, tokenizers, data, optimizer, train
step, checkpoints, resume), then ``Trainer.run`` (step, log, sample, checkpoint; save and exit on
SIGTERM). The step itself is ``rl.train_step.TrainStep``.

On several hosts every process runs this same program: ``cluster.initialize`` joins them (explicit
coordinates or auto-detected), each process reads its rows of each global batch of one global data
order (``cluster.host_rows``) and the global batch is assembled with
``jax.make_array_from_process_local_data``. Only the lead process writes logs, samples and the
resolved config; every process takes part in checkpoint saves. The data position is the same
on every host (each reads its rows of the same global batches), so the lead's saved position
is restored by every host.
A SIGTERM to any one process stops them all after the same step (they agree after every step).
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from pairuni_jax import cluster as cluster_lib
from pairuni_jax import config as config_lib
from pairuni_jax import flops, sharding, stop_signals
from pairuni_jax import run_dir as run_dir_lib
from pairuni_jax.checkpoint import convert as janus_convert
from pairuni_jax.checkpoint import model_dir
from pairuni_jax.checkpoint import train_checkpoints as checkpoints_lib
from pairuni_jax.checkpoint.train_checkpoints import restore_checkpoint, save_checkpoint
from pairuni_jax.data.pipeline import HostSlice, PairPipeline
from pairuni_jax.data.prompts import SpecialIds, load_tokenizer
from pairuni_jax.errors import ExitCode
from pairuni_jax.evaluation.in_training import TrainingEval
from pairuni_jax.logging.curves import draw_run_curves
from pairuni_jax.logging.metrics import MetricsWriter, format_line
from pairuni_jax.logging.samples import save_answers, save_image_grid
from pairuni_jax.models import lora
from pairuni_jax.models.clip import CLIP, CLIPConfig
from pairuni_jax.models.janus import Janus, JanusConfig
from pairuni_jax.models.random_init import random_module
from pairuni_jax.rewards.accuracy import OptionLetterTable
from pairuni_jax.rewards.hps import load_reward_model
from pairuni_jax.rewards.registry import RewardWeights
from pairuni_jax.rl import health
from pairuni_jax.rl import optimizer as opt_lib
from pairuni_jax.rl import rewards as rl_rewards
from pairuni_jax.rl.rollout_data import StepSamples
from pairuni_jax.rl.train_step import TrainState, TrainStep, init_train_state
from pairuni_jax.rollout import layout as rollout_layout
from pairuni_jax.rollout import limits
from pairuni_jax.rollout.image import ImageSettings
from pairuni_jax.rollout.text import TextSettings
from pairuni_jax.run_config import ASSETS, ModelSection, RewardSection, RunConfig
from pairuni_jax.stop_signals import StopSignals

TINY_TOKENIZER = ASSETS / "tiny_tokenizer"
CLIP_TOKENIZER = ASSETS / "clip_tokenizer"
LINE_KEYS = ("und/reward_mean", "gen/reward_mean", "und/accuracy", "gen/hps", "grad_norm")


def is_lead() -> bool:
    return jax.process_index() == 0


def maybe_initialize_distributed(config: RunConfig) -> None:
    """Joins the processes of a multi-host run: ``config.cluster`` when given, else
    auto-detected on a multi-host slice (``cluster.initialize``)."""
    cluster_lib.initialize(config.cluster, config.distributed)


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
        directory = run_dir / run_dir_lib.MODEL_DIR
        if not directory.exists():
            if jax.process_count() > 1:  # one conversion, not one per host into the same dir
                raise cluster_lib.ClusterError(
                    f"model.path {source} is a Hugging Face checkpoint: convert it once before a "
                    f"multi-host run (pairuni convert hf-to-orbax {source} DIR; model.path=DIR)"
                ) from None
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
    raise cluster_lib.HostLayoutError(
        f"data.pairs_per_host × hosts = {global_pairs} pairs do not split over the "
        f"data × fsdp = {ways} batch shards of the mesh"
    )


def host_slice(
    batch: jax.sharding.NamedSharding, pairs_per_host: int, mesh: jax.sharding.Mesh
) -> HostSlice:
    """This process's rows of each global batch: those its devices hold under ``batch``."""
    global_pairs = pairs_per_host * jax.process_count()
    rows = cluster_lib.host_rows(batch, global_pairs)
    cluster_lib.check_host_rows(rows, pairs_per_host, mesh)
    return HostSlice(global_pairs, tuple(int(r) for r in rows))


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
    lock: run_dir_lib.RunLock | None  # held by the lead host until the run ends
    evaluator: TrainingEval | None = None  # the run config's ``eval`` section


def setup(config: RunConfig, allowed_changes: tuple[str, ...] = ()) -> Run:
    """Everything a run needs. ``allowed_changes``: config fields (or sections) a resume may
    change (``--allow-config-change``; see ``config_changes``)."""
    maybe_initialize_distributed(config)
    run_dir = Path(config.run_dir).absolute()
    lock = run_dir_lib.start_on_lead(
        run_dir, config_lib.to_dict(config), allowed_changes, _normalized_config
    )
    try:
        return _build(config, run_dir, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _normalized_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config with today's defaults for fields it predates (as the run used them)."""
    try:
        return config_lib.to_dict(config_lib.build(RunConfig, saved))
    except config_lib.ConfigError:  # written by an incompatible version: compare as saved
        return saved


def _build(config: RunConfig, run_dir: Path, lock: run_dir_lib.RunLock | None) -> Run:
    mesh = sharding.make_mesh(config.mesh)

    policy, tokenizer_dir = load_policy(config.model, mesh, run_dir)
    if config.model.lora is not None:
        policy = lora.add_adapters(policy, config.model.lora, mesh)
    hps, clip_tokenizer_dir = load_hps(config.reward, mesh)
    tokenizer = load_tokenizer(tokenizer_dir)
    ids = SpecialIds.from_tokenizer(tokenizer)
    letters = OptionLetterTable.from_tokenizer(
        tokenizer,
        letters=config.reward.option_letters,
        answer_tag=tuple(config.reward.answer_tag) if config.reward.answer_tag else None,
        vocab_size=policy.config.text.vocab_size,
    )

    data_config = data_for_model(config, policy.config)
    check_positions(config, policy.config)
    pipeline = PairPipeline(data_config, tokenizer, clip_tokenizer_dir)
    global_pairs = data_config.pairs_per_host * jax.process_count()
    check_rollout_rows(config, mesh, global_pairs)
    batch_sharding_ = batch_sharding(mesh, global_pairs)
    host = host_slice(batch_sharding_, data_config.pairs_per_host, mesh)

    opt_config = config.optimizer
    optimizer = opt_lib.make_optimizer(opt_config)
    graphdef, state = init_train_state(policy, config.grpo, optimizer)
    state = jax.device_put(state, sharding.tree_shardings(state, mesh))
    hps_graphdef, reward_state = rl_rewards.reward_state(hps, letters)
    chip = flops.chip_for_device_kind(jax.devices()[0].device_kind)
    layout = decode_layout(config, policy.config, mesh, global_pairs, chip)
    step_fn = make_train_step(config, graphdef, optimizer, hps_graphdef, reward_state, ids, layout)
    shapes = flops.StepShapes.from_run_config(config, global_pairs)
    peak = config.logging.peak_tflops * 1e12 if config.logging.peak_tflops else None
    peak = peak or (chip.peak_flops if chip else None)

    def checkpoint_manager() -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            run_dir / run_dir_lib.CHECKPOINTS_DIR,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=config.checkpoint.keep,
                enable_async_checkpointing=config.checkpoint.async_save,
            ),
        )

    checkpoints, latest, restored = checkpoints_lib.restore_newest_intact(
        checkpoint_manager,
        lambda manager, step: restore_checkpoint(manager, step, state),
        config.checkpoint.on_corrupt,
        run_dir / checkpoints_lib.CORRUPT_DIR,
    )
    evaluator = TrainingEval.from_run(
        config,
        mesh=mesh,
        graphdef=graphdef,
        model_config=policy.config,
        tokenizer=tokenizer,
        letters=letters,
        hps_graphdef=hps_graphdef,
        hps_params=reward_state["hps"],
        hps_tokenize=pipeline.encoder.hps_tokenize,
        verbose=is_lead(),
    )
    data_iter = pipeline.iterator(host)
    start_step = 0
    if latest is not None:
        state, data_state = restored
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
        batch_sharding_,
        checkpoints,
        tokenizer,
        start_step,
        flops.step_flops(shapes, policy.config, hps.config),
        flops.step_tokens(shapes, policy.config),
        peak,
        lock,
        evaluator,
    )


def make_train_step(
    config: RunConfig,
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    hps_graphdef: nnx.GraphDef,
    reward_state: Any,
    ids: SpecialIds,
    layout: rollout_layout.DecodeLayout,
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
        skip_nonfinite=config.nan_policy is health.NanPolicy.SKIP_STEP,
        decode_layout=layout,
    )


def check_positions(config: RunConfig, model_config: JanusConfig) -> None:
    """The padded prompts plus their rollouts must fit the model's positions."""
    data, rollout = config.data, config.grpo.rollout
    limits.check_positions(
        model_config,
        data.max_und_len,
        rollout.max_new_tokens,
        "data.max_und_len + grpo.rollout.max_new_tokens",
    )
    limits.check_positions(
        model_config,
        data.max_gen_len,
        model_config.num_generated_image_tokens,
        "data.max_gen_len + the generated image tokens",
    )


def decode_layout(
    config: RunConfig,
    model_config: JanusConfig,
    mesh: jax.sharding.Mesh,
    global_pairs: int,
    chip: flops.Chip | None,
) -> rollout_layout.DecodeLayout:
    """``grpo.rollout.layout`` resolved for this mesh and chip (``auto``: from the chip's HBM),
    checked against the rollout rows."""
    r = config.grpo.rollout
    hbm = chip.hbm_bytes if chip else None
    dtype = config.model.dtype.dtype
    rows = rollout_rows(config, global_pairs)
    return rollout_layout.resolve(r.layout, model_config, dict(mesh.shape), dtype, hbm, rows)


def rollout_rows(config: RunConfig, global_pairs: int) -> dict[str, int]:
    """The rows the decode loops of a step decode: ``{what: count}``, as ``rollout.layout``
    checks them."""
    r = config.grpo.rollout
    return {
        "answer rows": global_pairs * r.num_und_rollouts,
        "image rows": global_pairs * r.num_gen_rollouts,
    }


def data_for_model(config: RunConfig, model_config: JanusConfig):
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


# -- the loop ------------------------------------------------------------------------------------


class Trainer:
    """``Trainer(config).run_steps()``; ``stopped_by`` says which signal stopped it, if any."""

    def __init__(self, config: RunConfig, allowed_changes: tuple[str, ...] = ()):
        self.run = setup(config, allowed_changes)
        self.stop = StopSignals()
        # The signal all processes agreed to stop on after the latest step. Only this decides
        # the loop: ``stop.received`` may change in one process between two agreements.
        self.stopped_by: signal.Signals | None = None
        self.skipped_steps = 0  # nan_policy: skip_step

    def run_steps(self) -> list[dict[str, float]]:
        """Runs to ``config.steps`` (or until SIGTERM / SIGINT, after saving); returns the logged
        metrics. Raises ``health.NonFiniteError`` under ``nan_policy: stop``."""
        run, config = self.run, self.run.config
        writer = MetricsWriter(  # each step once: rows after the restored step are dropped
            run.run_dir,
            is_lead=is_lead(),
            tensorboard=config.logging.tensorboard,
            start_step=run.start_step + 1,
            wandb=config.logging.wandb,
            config=config_lib.to_dict(config),
        )
        rng = jax.random.key(config.seed)
        history: list[dict[str, float]] = []
        state, step = run.state, run.start_step
        bar = tqdm(
            total=config.steps, initial=step, desc="train", unit="step", disable=not is_lead()
        )
        try:
            with jax.set_mesh(run.mesh), self.stop:
                while step < config.steps and self.stopped_by is None:
                    batch = self._next_batch()
                    if step == run.start_step:
                        self._compile_together(state, batch, rng)
                    start = time.perf_counter()
                    state, metrics, samples = run.step_fn(state, batch, rng)
                    step += 1
                    self._agree_on_stop()
                    nonfinite = health.flagged(jax.device_get({k: metrics[k] for k in health.KEYS}))
                    if nonfinite or step % config.logging.every == 0 or step == config.steps:
                        values = self._values(metrics, time.perf_counter() - start)
                        history.append({"step": step, **values})
                        writer.write(step, values)
                        bar.set_postfix_str(format_line(step, values, keys=LINE_KEYS))
                        if nonfinite:
                            self._on_nonfinite(step, nonfinite, values)
                    if config.logging.samples_every and (
                        step == 1 or step % config.logging.samples_every == 0
                    ):  # the first grid shows where the run starts
                        self._write_samples(step, batch, samples, writer)
                    if run.evaluator is not None and run.evaluator.due(step):
                        writer.write(step, run.evaluator(state))
                    if (
                        step % config.checkpoint.every == 0
                        or step == config.steps
                        or self.stopped_by is not None
                    ):
                        save_checkpoint(run.checkpoints, step, state, run.data_iter.get_state())
                        if is_lead():
                            draw_run_curves(run.run_dir)
                    bar.update()
        finally:
            bar.close()
            run.checkpoints.wait_until_finished()
            writer.close()
            if run.lock is not None:
                run.lock.release()
        run.state = state
        if is_lead():
            print(f"done at step {step}; {self._skipped_summary()}", file=sys.stderr)
        return history

    def _values(self, metrics: dict[str, jax.Array], seconds: float) -> dict[str, float]:
        run = self.run
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        values["step_seconds"] = seconds
        sampled = values["und/tokens_sampled"] + values["gen/tokens_sampled"]
        tokens = {"sampled": sampled, "trained": run.step_tokens["trained"]}
        values.update(
            flops.perf_metrics(run.step_flops, tokens, seconds, jax.device_count(), run.peak_flops)
        )
        values["data/skipped_records"] = float(
            run.pipeline.report.skipped + run.pipeline.map_skips.skipped
        )
        values["nonfinite/skipped_steps"] = float(self.skipped_steps)
        return values

    def _on_nonfinite(self, step: int, flagged: list[str], values: dict[str, float]) -> None:
        what = health.describe(flagged, values)
        if self.run.config.nan_policy is health.NanPolicy.SKIP_STEP:
            self.skipped_steps += 1
            print(
                f"step {step}: {what}; its update was skipped (nan_policy=skip_step)",
                file=sys.stderr,
            )
            return
        latest = self.run.checkpoints.latest_step()
        raise health.NonFiniteError(
            f"step {step}: {what}; stopped before saving it (the latest checkpoint is "
            f"{'step ' + str(latest) if latest is not None else 'none'}; "
            "nan_policy=skip_step skips such steps instead)"
        )

    def _skipped_summary(self) -> str:
        report, map_skips = self.run.pipeline.report, self.run.pipeline.map_skips
        kinds = dict(report.errors_by_kind + map_skips.errors_by_kind)
        text = f"skipped records: {report.skipped + map_skips.skipped} {kinds}"
        if self.skipped_steps:
            text += f"; steps skipped for non-finite values: {self.skipped_steps}"
        return text

    @property
    def exit_code(self) -> ExitCode:
        return stop_signals.exit_code(self.stopped_by)

    def _agree_on_stop(self) -> None:
        """A signal to any one process stops them all after the same step: every process
        takes the signal one of them received (``stop.received``, by signal number)."""
        received = self.stop.received
        agreed = cluster_lib.max_over_processes(int(received) if received is not None else 0)
        if agreed:
            self.stopped_by = signal.Signals(agreed)

    def _compile_together(self, state: TrainState, batch: dict, rng: jax.Array) -> None:
        """Several processes: compile the step, then wait for each other before running it, so
        one that compiles slower (on CPU the persistent cache serves only process 0) does not
        make the first step's collectives time out."""
        if jax.process_count() == 1:
            return
        self.run.step_fn.lower(state, batch, rng).compile()  # the step's first call reuses it
        cluster_lib.barrier("pairuni: train step compiled", cluster_lib.STEP_COMPILE_TIMEOUT_S)

    def _next_batch(self) -> dict[str, jax.Array]:
        """This process's rows (``Run.data_iter``) assembled into the global batch: local row
        ``j`` lands at global row ``rows[j]`` (``cluster.host_rows``)."""
        local = next(self.run.data_iter)
        sharding_ = self.run.batch_sharding
        pairs = self.run.pipeline.config.pairs_per_host * jax.process_count()
        return {
            k: jax.make_array_from_process_local_data(
                sharding_, np.asarray(v), (pairs, *np.shape(v)[1:])
            )
            for k, v in local.items()
        }

    def _write_samples(
        self, step: int, batch: dict, samples: StepSamples, writer: MetricsWriter
    ) -> None:
        # Every process takes part: the arrays may be spread over all of them.
        samples, first = multihost_utils.process_allgather(
            (samples, batch["record_index"][0]), tiled=True
        )
        if not is_lead():
            return
        record = self.run.pipeline.record(int(first))
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
