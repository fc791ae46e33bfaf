"""The ``pairuni train`` run config: every section a typed, frozen dataclass.

The defaults are the embedded CPU demo (``configs/tiny.yaml`` spells them out): the demo world's
warm-started tiny Janus and tiny HPS model (``assets/demo_policy``, ``assets/demo_reward``, built
by ``scripts/build_demo_world.py``) on the bundled synthetic pairs. A YAML file and
``key.sub=value`` overrides replace any field; ``load_run_config`` validates the result and names
the offending field on error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pairuni_jax import config as config_lib
from pairuni_jax.checkpoint.train_checkpoints import OnCorrupt
from pairuni_jax.cluster import ClusterConfig
from pairuni_jax.data.pipeline import DataConfig
from pairuni_jax.dtypes import DType
from pairuni_jax.evaluation.config import EvalConfig
from pairuni_jax.logging.wandb_writer import WandbConfig
from pairuni_jax.models.lora import LoraConfig
from pairuni_jax.models.stack import RematPolicy
from pairuni_jax.rl.health import NanPolicy
from pairuni_jax.rl.loss import LossConfig
from pairuni_jax.rl.optimizer import OptimizerConfig
from pairuni_jax.rl.train_step import GRPOConfig, RolloutConfig
from pairuni_jax.sharding import MeshConfig

ASSETS = Path(__file__).parent / "assets"
DEMO_POLICY = ASSETS / "demo_policy"
DEMO_REWARD = ASSETS / "demo_reward"


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """The policy: an Orbax model directory, a Hugging Face checkpoint directory (converted on the
    fly), or, with ``path: null``, a random model of ``preset`` (for tests). The demo's default is
    the shipped ``assets/demo_policy``. With ``lora`` set, only low-rank adapters on
    ``lora.targets`` are trained (``models/lora.py``)."""

    path: str | None = None
    preset: str = "tiny"
    init_seed: int = 0
    tokenizer: str | None = None  # default: the model directory, or the bundled tiny tokenizer
    dtype: DType = DType.FP32  # compute dtype: bf16 on accelerators
    param_dtype: DType = DType.FP32
    scan_layers: bool = True
    remat: RematPolicy = RematPolicy.FULL  # for the teacher-forced training forward
    lora: LoraConfig | None = None  # {rank, alpha, targets, base_dtype, ...}: train adapters only


@dataclasses.dataclass(frozen=True)
class RewardSection:
    """The HPS reward model (an Orbax reward directory from ``pairuni convert hpsv2``, the demo's
    ``assets/demo_reward`` by default, or a random tiny CLIP with ``path: null``) and the reward
    weights of each side."""

    path: str | None = None
    init_seed: int = 1
    clip_tokenizer: str | None = None  # default: the reward directory, or the bundled CLIP files
    dtype: DType = DType.FP32
    understanding: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"accuracy": 1.0, "format": 0.0}
    )
    generation: dict[str, float] = dataclasses.field(default_factory=lambda: {"hps": 1.0})
    answer_tag: tuple[str, ...] | None = None  # e.g. ["<answer>", "</answer>"]
    option_letters: str = "ABCDEFGH"

    def __post_init__(self):
        if self.answer_tag is not None and len(self.answer_tag) != 2:
            raise ValueError(f"answer_tag must be [open, close], got {self.answer_tag!r}")


@dataclasses.dataclass(frozen=True)
class CheckpointSection:
    every: int = 10  # steps between saves (and at the end)
    keep: int = 3  # the newest checkpoints kept (>= 2 leaves one to fall back to)
    async_save: bool = True
    on_corrupt: OnCorrupt = OnCorrupt.PREVIOUS  # an unreadable latest checkpoint on resume

    def __post_init__(self):
        _check_at_least_one(self, "every", "keep")


@dataclasses.dataclass(frozen=True)
class LoggingSection:
    every: int = 1  # steps between metric lines
    samples_every: int = 10  # steps between image grids / answer files; 0: none
    tensorboard: bool = True
    peak_tflops: float | None = None  # per-chip bf16 peak for MFU; None: from the device kind
    wandb: WandbConfig | None = None  # {project, entity, mode}: also log to Weights & Biases

    def __post_init__(self):
        _check_at_least_one(self, "every")
        if self.samples_every < 0:
            raise ValueError(f"samples_every must be >= 0 (0: none), got {self.samples_every}")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise ValueError(f"peak_tflops must be > 0 or null, got {self.peak_tflops}")


def _check_at_least_one(section: Any, *names: str) -> None:
    for name in names:
        if getattr(section, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(section, name)}")


def demo_data() -> DataConfig:
    # The demo policy is warm-started without Janus' system prompt: answer prompts of under 80
    # tokens instead of ~110 on the 2-core CPU the demo is sized for.
    return DataConfig.demo(image_size=32, max_und_len=80, system_prompt="", pairs_per_host=16)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    run_dir: str = "runs/tiny"
    steps: int = 160
    seed: int = 0
    distributed: bool | None = None  # None: initialise jax.distributed when launched multi-host
    nan_policy: NanPolicy = NanPolicy.STOP  # a non-finite loss, gradient norm or param
    cluster: ClusterConfig = dataclasses.field(default_factory=ClusterConfig)  # explicit hosts
    model: ModelSection = dataclasses.field(
        default_factory=lambda: ModelSection(path=str(DEMO_POLICY))
    )
    reward: RewardSection = dataclasses.field(
        default_factory=lambda: RewardSection(path=str(DEMO_REWARD))
    )
    data: DataConfig = dataclasses.field(default_factory=demo_data)
    # The demo world's settings, each measured against its neighbours (README "The demo
    # world"): without the KL anchor the image distribution collapses, and at full weight the
    # image loss (1024 tokens per step against 128 answer tokens) raises the image reward less.
    grpo: GRPOConfig = dataclasses.field(
        default_factory=lambda: GRPOConfig(
            rollout=RolloutConfig(num_und_rollouts=4, num_gen_rollouts=4, max_new_tokens=16),
            loss=LossConfig(kl_beta=0.05),
            generation_weight=0.3,
        )
    )
    optimizer: OptimizerConfig = dataclasses.field(
        default_factory=lambda: OptimizerConfig(learning_rate=1e-3, total_steps=160)
    )
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    checkpoint: CheckpointSection = dataclasses.field(
        default_factory=lambda: CheckpointSection(every=50)
    )
    logging: LoggingSection = dataclasses.field(
        default_factory=lambda: LoggingSection(samples_every=40)
    )
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


def load_run_config(
    paths: Sequence[str | Path] = (), overrides: Sequence[str] = (), schema: type = RunConfig
) -> Any:
    """Defaults, then each YAML file in order (e.g. a model config, then a mesh preset), then
    the ``key.sub=value`` overrides; validated. ``schema``: the config dataclass (``RunConfig``;
    ``sft.SFTRunConfig`` for ``pairuni sft``)."""
    data: dict[str, Any] = config_lib.to_dict(schema())
    for path in paths:
        data = _merge(data, config_lib.load_yaml(path))
    return config_lib.build(schema, config_lib.apply_overrides(data, overrides))


def _merge(base: Any, update: Any) -> Any:
    """``update`` over ``base``, recursively for mappings, so a file names only what changes."""
    if isinstance(base, dict) and isinstance(update, dict):
        out = dict(base)
        for key, value in update.items():
            out[key] = _merge(base[key], value) if key in base else value
        return out
    return update
