"""``pairuni train`` cannot lose work: user errors are one line, a resume is checked before anything
is written, a run dir has one trainer, signals stop at a checkpoint with their own exit codes,
non-finite values stop the run before it saves, and a corrupt checkpoint falls back to the newest
intact one. Every run here uses the compiled program of ``test_train_run.FAST``."""

import json
import os
import shutil
import signal
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest

from pairuni_jax import cli, run_dir
from pairuni_jax import train as train_lib
from pairuni_jax.checkpoint import train_checkpoints as tc
from pairuni_jax.config import ConfigError
from pairuni_jax.errors import ExitCode
from pairuni_jax.rl.train_step import TrainStep
from pairuni_jax.run_config import load_run_config
from pairuni_jax.train import Trainer
from tests import kill_harness as kh
from tests.files import snapshot
from tests.test_train_run import FAST

TWO_STEPS = [*FAST, "steps=2", "checkpoint.every=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-step run with checkpoints at steps 1 and 2 (each test works on a copy)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert cli.main(["train", f"run_dir={run}", *TWO_STEPS]) == 0
    assert kh.checkpoint_steps(run) == [1, 2]
    return run


def _copy(trained: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "run"))


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: "), err
    return err[-1]


@pytest.mark.parametrize(
    "override,message",
    [
        ("optimizer.learning_rate=abc", "optimizer.learning_rate: expected float, got 'abc'"),
        ("checkpoint.every=0", "checkpoint: every must be >= 1, got 0"),
        ("data.path=/nonexistent/pairs.jsonl", "/nonexistent/pairs.jsonl"),
    ],
)
def test_user_errors_are_one_error_line_and_exit_2(override, message, tmp_path, capsys):
    argv = ["train", f"run_dir={tmp_path / 'run'}", *FAST, override]
    assert cli.main(argv) == ExitCode.USER_ERROR
    line = _error_line(capsys)
    assert message in line and "Traceback" not in capsys.readouterr().err
    if override.startswith("optimizer"):
        with pytest.raises(ConfigError, match="optimizer.learning_rate"):
            cli.main([*argv, "--debug"])


@pytest.mark.parametrize(
    "override,message",
    [
        ("optimizer.learning_rate=3e-5", "optimizer.learning_rate: 0.001 -> 3e-05"),
        ("model.init_seed=1", "model.init_seed: 0 -> 1 cannot change on resume"),
        ("data.pairs_per_host=2", "data.pairs_per_host: 4 -> 2 cannot change on resume"),
    ],
)
def test_a_changed_resume_is_refused_before_anything_is_written(
    override, message, trained, tmp_path, capsys
):
    run = _copy(trained, tmp_path)
    before = snapshot(run)
    assert cli.main(["train", f"run_dir={run}", *TWO_STEPS, override]) == ExitCode.USER_ERROR
    assert message in _error_line(capsys)
    assert snapshot(run) == before


def test_a_users_own_config_yaml_is_never_overwritten(tmp_path, capsys):
    mine = tmp_path / "experiment"
    mine.mkdir()
    (mine / "config.yaml").write_text("# my sweep\nsteps: 2\n")
    before = snapshot(mine)
    argv = ["train", "--config", str(mine / "config.yaml"), f"run_dir={mine}", *TWO_STEPS]
    assert cli.main(argv) == ExitCode.USER_ERROR
    assert "which pairuni train did not write" in _error_line(capsys)
    assert snapshot(mine) == before


def test_a_second_trainer_on_a_run_dir_is_refused(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    first = Trainer(load_run_config([], [f"run_dir={run}", *TWO_STEPS]))
    try:
        assert cli.main(["train", f"run_dir={run}", *TWO_STEPS]) == ExitCode.USER_ERROR
        assert f"in use by pid {os.getpid()}" in _error_line(capsys)
    finally:
        first.run.lock.release()


def _patch_step(monkeypatch, before_call):
    """Runs ``before_call(state)`` (which may return a replacement state) before every step."""
    original = TrainStep.__call__

    def call(self, state, batch, rng):
        state = before_call(state) or state
        out = original(self, state, batch, rng)
        jax.block_until_ready(out)
        return out

    monkeypatch.setattr(TrainStep, "__call__", call)


@pytest.mark.parametrize(
    "signum,code", [(signal.SIGTERM, ExitCode.PREEMPTED), (signal.SIGINT, ExitCode.INTERRUPTED)]
)
def test_a_signal_during_a_step_saves_it_and_exits_with_its_code(
    signum, code, trained, tmp_path, monkeypatch, capsys
):
    """The signal arrives while the resumed run's first step runs (compiling, the first time):
    that step finishes and is saved; a longer run is a config change the flag accepts."""
    run = _copy(trained, tmp_path)
    timers = []

    def signal_soon(state):
        timers.append(threading.Timer(0.05, os.kill, (os.getpid(), signum)))
        timers[-1].start()

    _patch_step(monkeypatch, signal_soon)
    argv = ["train", f"run_dir={run}", *FAST, "steps=5", "checkpoint.every=1000"]
    assert cli.main([*argv, "--allow-config-change", "steps"]) == code
    for timer in timers:
        timer.join()
    assert len(timers) == 1
    assert kh.checkpoint_steps(run) == [1, 2, 3]
    assert kh.logged_steps(run) == [1, 2, 3]
    assert f"{signum.name}: stopping after this step" in capsys.readouterr().err
    history = sorted((run / run_dir.HISTORY_DIR).iterdir())
    assert len(history) == 2, "the accepted change is recorded beside the original config"


def test_a_signal_after_the_stop_agreement_stops_after_the_next_step(
    trained, tmp_path, monkeypatch
):
    """The processes agree on stopping right after each step; a SIGTERM that lands later (here:
    during step 3's save) waits for the next agreement. Acting on it at once made the signalled
    process leave the loop while the others ran step 4 and waited in its collectives forever."""
    run = _copy(trained, tmp_path)
    original = train_lib.save_checkpoint
    saved = []

    def save_then_signal(manager, step, *args, **kwargs):
        original(manager, step, *args, **kwargs)
        saved.append(step)
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(train_lib, "save_checkpoint", save_then_signal)
    argv = ["train", f"run_dir={run}", *FAST, "steps=6", "checkpoint.every=1"]
    assert cli.main([*argv, "--allow-config-change", "steps"]) == ExitCode.PREEMPTED
    assert saved == [3, 4]
    assert kh.checkpoint_steps(run)[-1] == 4
    assert kh.logged_steps(run) == [1, 2, 3, 4]


def test_non_finite_params_stop_the_run_before_it_saves(trained, tmp_path, monkeypatch, capsys):
    run = _copy(trained, tmp_path)

    def poison(state):  # what an exploding update leaves behind
        return state.replace(params=jax.tree.map(lambda x: x * jnp.nan, state.params))

    _patch_step(monkeypatch, poison)
    argv = ["train", f"run_dir={run}", *FAST, "steps=3", "--allow-config-change", "steps"]
    assert cli.main(argv) == ExitCode.NON_FINITE
    line = _error_line(capsys)
    assert "step 3: non-finite loss" in line and "non-finite params" in line
    assert "the latest checkpoint is step 2" in line
    assert kh.checkpoint_steps(run) == [1, 2]
    assert not (run / run_dir.LOCK_FILE).exists()
    rows = kh.metrics(run)
    assert rows[-1]["step"] == 3 and rows[-1]["nonfinite/params"] == 1.0


def _truncate_largest_array(step_dir: Path) -> None:
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in str(p)]
    largest = max(files, key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])


CORRUPTIONS = {
    "truncated array file": _truncate_largest_array,
    "empty _METADATA": lambda d: (d / "state" / "_METADATA").write_text(""),
    "bad data JSON": lambda d: (d / "data" / "metadata").write_text('{"next_index": 8'),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_a_corrupt_latest_checkpoint_is_named_and_set_aside(corruption, trained, tmp_path):
    run = _copy(trained, tmp_path)
    CORRUPTIONS[corruption](run / "checkpoints" / "2")
    corrupt = snapshot(run / "checkpoints" / "2")

    def manager():
        return ocp.CheckpointManager(run / "checkpoints")

    def restore(m, step):
        return m.restore(step)  # reads every array and item, as saved

    with pytest.raises(tc.CorruptCheckpointError) as info:
        tc.restore_newest_intact(manager, restore, tc.OnCorrupt.STOP, run / tc.CORRUPT_DIR)
    assert f"checkpoint step 2 at {run / 'checkpoints' / '2'} cannot be read" in str(info.value)
    assert "checkpoint.on_corrupt=previous resumes from step 1" in str(info.value)
    assert kh.checkpoint_steps(run) == [1, 2]

    _, step, restored = tc.restore_newest_intact(
        manager, restore, tc.OnCorrupt.PREVIOUS, run / tc.CORRUPT_DIR
    )
    assert step == 1 and restored["data"] == {"next_index": 4}  # one batch of 4 pairs read
    assert kh.checkpoint_steps(run) == [1]
    (moved,) = (run / tc.CORRUPT_DIR).iterdir()
    assert moved.name.startswith("2-") and snapshot(moved) == corrupt


def test_training_resumes_past_a_corrupt_checkpoint_to_the_same_metrics(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    _truncate_largest_array(run / "checkpoints" / "2")
    assert cli.main(["train", f"run_dir={run}", *TWO_STEPS]) == 0
    err = capsys.readouterr().err
    assert "checkpoint step 2 at" in err and f"moved it to {run / tc.CORRUPT_DIR}" in err
    assert "resumed from" in err and "at step 1" in err
    assert kh.checkpoint_steps(run) == [1, 2] and kh.logged_steps(run) == [1, 2]
    assert [kh.comparable(r) for r in kh.metrics(run)] == [
        kh.comparable(r) for r in kh.metrics(trained)
    ]
    assert json.loads((run / "checkpoints" / "2" / "data" / "metadata").read_text()) == {
        "next_index": 8
    }
