"""`pairuni train` end to end on the tiny demo: outputs, exact resume, SIGTERM."""

import json
import os
import signal
import threading

import numpy as np
import pytest

from pairuni_jax import cli
from pairuni_jax.run_config import RunConfig, load_run_config
from pairuni_jax.train import Trainer

FAST = [
    "steps=6",
    "checkpoint.every=3",
    "checkpoint.async_save=false",
    "logging.samples_every=3",
    "grpo.rollout.num_und_rollouts=2",
    "grpo.rollout.num_gen_rollouts=2",
    "grpo.rollout.max_new_tokens=8",
    "data.pairs_per_host=4",
]


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tiny_yaml_spells_out_the_defaults():
    from pathlib import Path

    root = Path(__file__).parents[1]
    defaults = RunConfig()
    absolute = [  # the YAML names the assets relative to the repository root
        f"data.path={defaults.data.path}",
        f"model.path={defaults.model.path}",
        f"reward.path={defaults.reward.path}",
    ]
    assert load_run_config([root / "configs/tiny.yaml"], absolute) == defaults


def test_train_writes_outputs_and_resumes_exactly(tmp_path):
    full = tmp_path / "full"
    assert cli.main(["train", f"run_dir={full}", *FAST]) == 0
    steps = sorted(p.name for p in (full / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == ["3", "6"]
    assert list((full / "tensorboard").glob("events.out.tfevents.*"))
    assert (full / "samples" / "step_000003.png").is_file()
    assert (full / "samples" / "step_000006_answers.txt").read_text().strip()
    assert (full / "config.yaml").is_file()
    full_metrics = _metrics(full)
    assert [m["step"] for m in full_metrics] == [1, 2, 3, 4, 5, 6]

    # Stop at 3, then resume to 6 in a new process-like Trainer: steps 4..6 are identical.
    part = tmp_path / "part"
    Trainer(load_run_config([], [f"run_dir={part}", *FAST, "steps=3"])).run_steps()
    resumed = Trainer(load_run_config([], [f"run_dir={part}", *FAST]), ("steps",))
    assert resumed.run.start_step == 3
    resumed.run_steps()
    part_metrics = _metrics(part)
    assert [m["step"] for m in part_metrics] == [1, 2, 3, 4, 5, 6]

    def timeless(m):  # wall-clock and throughput values differ between runs
        return {
            k: v for k, v in m.items() if k not in ("time", "step_seconds") and "per_s" not in k
        }

    for a, b in zip(full_metrics[3:], part_metrics[3:]):
        assert timeless(a) == timeless(b)
    assert "perf/model_tflops_per_step" in full_metrics[-1]


def test_sigterm_saves_a_usable_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    trainer = Trainer(
        load_run_config([], [f"run_dir={run_dir}", *FAST, "steps=50", "checkpoint.every=1000"])
    )
    step_fn = trainer.run.step_fn
    calls = {"n": 0}
    original = step_fn.__call__

    def step_then_signal(state, batch, rng):
        out = original(state, batch, rng)
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    trainer.run.step_fn = type("Wrapped", (), {"__call__": staticmethod(step_then_signal)})()
    assert threading.current_thread() is threading.main_thread()
    history = trainer.run_steps()
    assert len(history) == 2
    resumed = Trainer(
        load_run_config([], [f"run_dir={run_dir}", *FAST, "steps=3", "checkpoint.every=1000"]),
        ("steps",),
    )
    assert resumed.run.start_step == 2
    assert np.isfinite(resumed.run_steps()[-1]["und/reward_mean"])


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="grpo.rollout: unknown key"):
        load_run_config([], ["grpo.rollout.num_rollouts=3"])


def test_export_trained_policy_loads_in_transformers(tmp_path):
    """2 tiny steps, then `pairuni export` → transformers checkpoint with the trained weights."""
    import torch
    import transformers

    run_dir = tmp_path / "run"
    # A random tiny Janus: transformers cannot hold the demo VQ (GroupNorm of 8 groups, not 32).
    fast = [*FAST, "model.path=null"]
    assert cli.main(["train", f"run_dir={run_dir}", *fast, "steps=2", "checkpoint.every=2"]) == 0
    out = tmp_path / "hf"
    assert cli.main(["export", str(run_dir), str(out)]) == 0
    hf = transformers.JanusForConditionalGeneration.from_pretrained(out, dtype=torch.float32)
    trainer = Trainer(load_run_config([], [f"run_dir={run_dir}", *fast, "steps=2"]))
    trained = np.asarray(trainer.run.state.params["lm_head"]["kernel"][...])
    np.testing.assert_array_equal(hf.lm_head.weight.detach().numpy(), trained.T)
    assert cli.main(["export", str(run_dir), str(tmp_path / "x"), "--step", "7"]) == 1
