"""``kill -9`` of ``pairuni train`` before its first checkpoint and during asynchronous saves:
every restart resumes from the newest finished checkpoint (taking over the dead process's lock),
``metrics.jsonl`` holds each step once, and the metrics equal an uninterrupted run's.

``scripts/kill_resume_check.py`` runs the same with many kills at random moments."""

from pairuni_jax import cli
from tests import kill_harness as kh
from tests.test_train_run import FAST

STEPS = 3
OVERRIDES = [*FAST, f"steps={STEPS}", "checkpoint.every=1", "checkpoint.async_save=true"]
TIMEOUT = 900  # seconds per trainer process; a cold compilation cache makes the first one slow


def test_kill_9_anywhere_then_resume_gives_the_uninterrupted_metrics(tmp_path):
    reference = tmp_path / "reference"
    assert cli.main(["train", f"run_dir={reference}", *OVERRIDES]) == 0
    run, log = tmp_path / "killed", tmp_path / "train.log"

    # Killed after a logged step, before any checkpoint (the cadence may change on resume).
    process = kh.start(run, [*OVERRIDES, "checkpoint.every=1000"], log)
    assert kh.kill_when(process, lambda: len(kh.logged_steps(run)) >= 1, TIMEOUT)
    assert kh.checkpoint_steps(run) == [] and kh.logged_steps(run)[0] == 1

    # Killed while a checkpoint is being written, each time after one more has finished.
    for _ in range(2):
        finished = max(kh.checkpoint_steps(run), default=0)
        process = kh.start(run, OVERRIDES, log)
        assert kh.kill_when(
            process,
            lambda finished=finished: (
                kh.saving(run) and max(kh.checkpoint_steps(run), default=0) > finished
            ),
            TIMEOUT,
        ), log.read_text()[-3000:]

    assert kh.run_to_end(run, OVERRIDES, log, TIMEOUT) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert text.count("taking over the stale lock") == 3
    assert kh.logged_steps(run) == list(range(1, STEPS + 1))
    assert [kh.comparable(r) for r in kh.metrics(run)] == [
        kh.comparable(r) for r in kh.metrics(reference)
    ]
