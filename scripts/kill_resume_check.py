"""``kill -9`` a tiny ``pairuni train`` run many times, resume it each time, compare with a clean run.

    python scripts/kill_resume_check.py [--kills 15] [--steps 12] [--seed 0] [--workdir DIR]

Runs the tiny config (the same as ``tests/test_kill_resume.py``) once uninterrupted, then again
in a fresh run dir, killed ``--kills`` times: alternately while an asynchronous checkpoint save is
in progress (after at least one more checkpoint finished) and at a random moment after the first
logged step; then it runs the killed one to the end. Prints every kill (what it hit, the
finished checkpoints, the logged steps) and whether ``metrics.jsonl`` holds each step once with
the uninterrupted run's values. Exit code 0 when it does, 1 otherwise. The CI test does three
kills; this is the exhaustive version (about a minute per kill on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import kill_harness as kh  # noqa: E402
from tests.test_train_run import FAST  # noqa: E402


def _during_a_save_after(run: Path, finished: int):
    return lambda: kh.saving(run) and max(kh.checkpoint_steps(run), default=0) > finished


def _after_a_new_step(run: Path, delay: float):
    """True ``delay`` seconds after the process logged its first step."""
    before = len(kh.logged_steps(run))
    first_seen: list[float] = []

    def condition() -> bool:
        if not first_seen and len(kh.logged_steps(run)) > before:
            first_seen.append(time.monotonic())
        return bool(first_seen) and time.monotonic() - first_seen[0] > delay

    return condition


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=15)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random kill moments")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary dir")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per trainer process")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kill-resume-"))
    overrides = [
        *FAST,
        f"steps={args.steps}",
        "checkpoint.every=1",
        "checkpoint.async_save=true",
    ]
    log = workdir / "train.log"
    reference, run = workdir / "reference", workdir / "killed"
    print(f"uninterrupted run in {reference} (log: {log})", flush=True)
    if kh.run_to_end(reference, overrides, log, args.timeout) != 0:
        print("the uninterrupted run failed; see the log", file=sys.stderr)
        return 1
    rng = random.Random(args.seed)
    for kill in range(args.kills):
        finished = max(kh.checkpoint_steps(run), default=0)
        if finished >= args.steps:
            print(f"the run finished before kill {kill + 1}; stopping the kills")
            break
        process = kh.start(run, overrides, log)
        if kill % 2 == 0:
            moment = "during a save"
            condition = _during_a_save_after(run, finished)
        else:
            delay = rng.uniform(0.0, 20.0)
            moment = f"{delay:.1f} s after the first new step"
            condition = _after_a_new_step(run, delay)
        hit = kh.kill_when(process, condition, args.timeout)
        print(
            f"kill {kill + 1:2d} {moment}: {'killed' if hit else 'process ended first'}; "
            f"checkpoints {kh.checkpoint_steps(run)}, logged steps {kh.logged_steps(run)}",
            flush=True,
        )
    if kh.run_to_end(run, overrides, log, args.timeout) != 0:
        print("the resumed run failed; see the log", file=sys.stderr)
        return 1
    steps = kh.logged_steps(run)
    same = [kh.comparable(r) for r in kh.metrics(run)] == [
        kh.comparable(r) for r in kh.metrics(reference)
    ]
    print(f"logged steps after the last resume: {steps}")
    print(f"each step once: {steps == list(range(1, args.steps + 1))}; metrics identical: {same}")
    return 0 if same and steps == list(range(1, args.steps + 1)) else 1


if __name__ == "__main__":
    sys.exit(main())
