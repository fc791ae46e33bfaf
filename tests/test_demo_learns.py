"""`pairuni train` with no arguments learns: both rewards rise well above their run-to-run noise.

The demo config as it ships (five epochs of the 512 demo pairs), without its sample grids and
TensorBoard events. Each side's gain is the mean reward of the last epoch's steps minus the
first epoch's; its noise is the standard error of that difference from the steps' own spread
(another run draws other batches and samples). With the loss sign flipped, both gains come out
negative.
"""

from __future__ import annotations

import numpy as np

from pairuni_jax.run_config import RunConfig, load_run_config
from pairuni_jax.train import Trainer


def test_the_demo_raises_both_rewards_above_noise(tmp_path):
    config = RunConfig()
    overrides = [
        f"run_dir={tmp_path / 'run'}",
        f"checkpoint.every={config.steps}",
        "logging.samples_every=0",
        "logging.tensorboard=false",
    ]
    trainer = Trainer(load_run_config([], overrides))
    epoch = len(trainer.run.pipeline.source) // config.data.pairs_per_host  # 512 pairs / 16
    assert config.steps == 5 * epoch
    history = trainer.run_steps()
    assert [row["step"] for row in history] == list(range(1, config.steps + 1))
    gains = {}
    for key in ("und/accuracy", "gen/reward_mean"):
        values = np.array([row[key] for row in history])
        first, last = values[:epoch], values[-epoch:]
        gains[key] = last.mean() - first.mean()
        noise = np.sqrt((first.var(ddof=1) + last.var(ddof=1)) / epoch)
        assert gains[key] > 4 * noise, (key, gains[key], noise)
    assert gains["und/accuracy"] >= 0.2, gains
