"""The run config's ``eval`` section: ``eval/...`` metrics at the configured steps (metrics.jsonl and
TensorBoard), programs compiled once, a resumed run that evaluates exactly as the whole one, and
``pairuni eval --run`` on a checkpoint agreeing with what the trainer logged at that step."""

import json

import pytest

from pairuni_jax import cli
from pairuni_jax.data.pipeline import DEMO_PAIRS
from pairuni_jax.run_config import load_run_config
from pairuni_jax.train import Trainer

# The step of tests/test_train_run.py (its compiled program is shared through the test cache).
FAST = [
    "steps=2",
    "checkpoint.every=1",
    "checkpoint.async_save=false",
    "logging.samples_every=0",
    "grpo.rollout.num_und_rollouts=2",
    "grpo.rollout.num_gen_rollouts=2",
    "grpo.rollout.max_new_tokens=8",
    "data.pairs_per_host=4",
]


def _eval_lines(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [m for m in lines if any(k.startswith("eval/") for k in m)]


def test_eval_during_training_logs_metrics_and_resumes_identically(tmp_path):
    (tmp_path / "prompts.txt").write_text("three orange circles\n\na blue square\n")
    section = [
        "eval.every=1",
        f"eval.understanding={DEMO_PAIRS}",  # a pair file: its understanding halves
        "eval.max_questions=3",
        f"eval.generation={tmp_path / 'prompts.txt'}",
        "eval.images_per_prompt=2",
        "eval.batch_size=2",  # 2 batches of questions (one padded), 2 of one prompt's images
    ]
    full = tmp_path / "full"
    trainer = Trainer(load_run_config([], [f"run_dir={full}", *FAST, *section]))
    trainer.run_steps()
    assert trainer.run.evaluator.evaluator.compiled_programs() == 2  # one per side, run twice
    logged = _eval_lines(full)
    assert [m["step"] for m in logged] == [1, 2]
    for m in logged:
        assert {k for k in m if k not in ("step", "time")} >= {
            "eval/und/accuracy",
            "eval/und/no_letter",
            "eval/und/accuracy/shapes_und",
            "eval/gen/hps_mean",
            "eval/gen/hps_std",
            "eval/gen/hps_mean/untagged",
        }
        assert all(k.startswith("eval/") for k in m if k not in ("step", "time"))
        assert 0 <= m["eval/und/accuracy"] <= 1 and -1 <= m["eval/gen/hps_mean"] <= 1
    events = b"".join(p.read_bytes() for p in (full / "tensorboard").glob("events.out.*"))
    assert b"eval/und/accuracy" in events and b"eval/gen/hps_mean" in events

    part = tmp_path / "part"
    Trainer(load_run_config([], [f"run_dir={part}", *FAST, *section, "steps=1"])).run_steps()
    config = load_run_config([], [f"run_dir={part}", *FAST, *section])
    resumed = Trainer(config, allowed_changes=("steps",))
    assert resumed.run.start_step == 1
    resumed.run_steps()
    timeless = [{k: v for k, v in m.items() if k != "time"} for m in _eval_lines(part)]
    assert timeless == [{k: v for k, v in m.items() if k != "time"} for m in logged]

    # `pairuni eval --run` on the step-1 checkpoint: what the trainer logged at step 1.
    out = tmp_path / "eval"
    argv = ["eval", "--run", str(full), "--step", "1", "--out", str(out), "--batch-size", "2"]
    argv += ["--understanding", str(DEMO_PAIRS), "--max-questions", "3", "--max-new-tokens", "8"]
    argv += ["--generation", str(tmp_path / "prompts.txt"), "--images-per-prompt", "2"]
    assert cli.main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["step"] == 1 and report["model"] == str(full)
    step1 = logged[0]
    assert report["understanding"]["accuracy"] == step1["eval/und/accuracy"]
    assert report["understanding"]["no_letter"] == step1["eval/und/no_letter"]
    assert report["generation"]["hps_mean"] == pytest.approx(step1["eval/gen/hps_mean"], abs=1e-5)


def test_eval_section_is_checked():
    with pytest.raises(ValueError, match="eval: every > 0 needs an understanding or a generation"):
        load_run_config([], ["eval.every=5"])
    with pytest.raises(ValueError, match="eval: images_per_prompt must be >= 1"):
        load_run_config([], ["eval.images_per_prompt=0"])
