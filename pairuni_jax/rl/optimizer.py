"""The optimizer: AdamW with global-norm clipping and a warmup + cosine/constant schedule."""

from __future__ import annotations

import dataclasses
import enum
import math

import optax


class Schedule(enum.Enum):
    CONSTANT = "constant"
    COSINE = "cosine"


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    learning_rate: float = 1e-6  # PairUni
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float = 1.0  # global-norm clipping; 0 disables it
    warmup_steps: int = 0
    schedule: Schedule = Schedule.CONSTANT
    total_steps: int = 1200  # cosine decay horizon (PairUni-7B ran at most 1200 steps)
    final_lr_fraction: float = 0.0  # cosine ends at learning_rate × this

    def __post_init__(self):
        if not 0 < self.learning_rate < math.inf:
            raise ValueError(f"learning_rate must be finite and > 0, got {self.learning_rate}")
        if self.warmup_steps < 0 or self.total_steps <= self.warmup_steps:
            raise ValueError(
                f"need 0 <= warmup_steps < total_steps, got {self.warmup_steps}, {self.total_steps}"
            )


def learning_rate_schedule(config: OptimizerConfig) -> optax.Schedule:
    peak = config.learning_rate
    if config.schedule is Schedule.COSINE:
        return optax.warmup_cosine_decay_schedule(
            0.0 if config.warmup_steps else peak,
            peak,
            config.warmup_steps,
            config.total_steps,
            end_value=peak * config.final_lr_fraction,
        )
    if config.warmup_steps:
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, config.warmup_steps), optax.constant_schedule(peak)],
            [config.warmup_steps],
        )
    return optax.constant_schedule(peak)


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    adamw = optax.adamw(
        learning_rate_schedule(config),
        b1=config.b1,
        b2=config.b2,
        eps=config.eps,
        weight_decay=config.weight_decay,
    )
    if config.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(config.clip_norm), adamw)
    return adamw
