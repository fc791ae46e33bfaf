"""``kill -9`` a ``pairuni train`` process at chosen moments, restart it, and read what it left.

Used by ``tests/test_kill_resume.py`` (a few kills, in CI) and ``scripts/kill_resume_check.py``
(many kills at random moments). The trainer runs in a subprocess with the tests' persistent
compilation cache and matmul precision, so it reuses the programs the test process compiled.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

CACHE_DIR = os.path.join(tempfile.gettempdir(), "pairuni-jax-test-cache")  # as tests/conftest.py
ROOT = Path(__file__).resolve().parents[1]
SAVE_IN_PROGRESS = ".orbax-checkpoint-tmp"  # Orbax writes a step here, then renames it


def trainer_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
    env["JAX_COMPILATION_CACHE_DIR"] = CACHE_DIR
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def start(run_dir: Path, overrides: Sequence[str], log: Path) -> subprocess.Popen:
    """``pairuni train run_dir=RUN_DIR OVERRIDES...`` in a new process, stderr to ``log``."""
    argv = [sys.executable, "-m", "pairuni_jax.cli", "train", f"run_dir={run_dir}", *overrides]
    with open(log, "ab") as err:
        return subprocess.Popen(
            argv, cwd=ROOT, env=trainer_env(), stdout=subprocess.DEVNULL, stderr=err
        )


def saving(run_dir: Path) -> bool:
    """An asynchronous checkpoint save is being written."""
    directory = run_dir / "checkpoints"
    return directory.is_dir() and any(SAVE_IN_PROGRESS in p.name for p in directory.iterdir())


def logged_steps(run_dir: Path) -> list[int]:
    """The steps of the complete lines of ``metrics.jsonl``."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [
        json.loads(line)["step"]
        for line in path.read_text().splitlines(keepends=True)
        if line.endswith("\n")
    ]


def checkpoint_steps(run_dir: Path) -> list[int]:
    directory = run_dir / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def kill_when(
    process: subprocess.Popen,
    condition: Callable[[], bool],
    timeout: float,
    poll: float = 0.002,
) -> bool:
    """SIGKILLs ``process`` as soon as ``condition()`` holds; returns whether it held before
    ``timeout`` seconds (else the process is killed then) or the process ended first (False)."""
    deadline = time.monotonic() + timeout
    hit = False
    while process.poll() is None:
        if condition():
            hit = True
            break
        if time.monotonic() > deadline:
            break
        time.sleep(poll)
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait()
    return hit


def run_to_end(run_dir: Path, overrides: Sequence[str], log: Path, timeout: float) -> int:
    process = start(run_dir, overrides, log)
    try:
        return process.wait(timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def comparable(row: dict) -> dict:
    """A metrics row without the values that depend on wall-clock time."""
    return {
        k: v
        for k, v in row.items()
        if k not in ("time", "step_seconds") and "per_s" not in k and not k.startswith("perf/")
    }


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
