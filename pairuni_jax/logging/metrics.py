"""Training metrics to ``metrics.jsonl`` and TensorBoard (lead host only), and a stdout line.

``run_dir/metrics.jsonl`` holds one JSON object per logged step,
``{"step": 12, "time": 1718000000.5, "und/reward_mean": 0.5, ...}`` (``time``: Unix seconds;
non-finite values are written as Python's json writes them: ``NaN``, ``Infinity``). Each line is
flushed when written, so an interrupted run leaves complete lines (plus at most one torn line).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pairuni_jax.logging.tensorboard import EventWriter

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_RESERVED = ("step", "time")


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if key in _RESERVED:
            raise ValueError(f"metric name {key!r} is reserved for the line's own field")
        array = np.asarray(value)
        if array.ndim != 0:
            raise ValueError(f"metric {key!r}: expected a scalar, got shape {array.shape}")
        out[key] = float(array)
    return out


def _truncate(path: Path, start_step: int) -> None:
    """Keep the complete lines of ``path`` with a step below ``start_step`` (atomic rewrite)."""
    kept = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith("\n"):
                break  # a line torn by the interrupted run
            try:
                step = json.loads(line)["step"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{number}: not a metrics line with a step ({e})") from e
            if step < start_step:
                kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)


class MetricsWriter:
    """Writes each logged step's scalar metrics; a no-op (no files) when not ``is_lead``.

    ``start_step`` (for a resumed run: the first step it will log) drops the lines at steps
    >= ``start_step`` that the interrupted run wrote after its last checkpoint, and tells
    TensorBoard to discard those points (see ``EventWriter``), so each step appears once.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        is_lead: bool = True,
        tensorboard: bool = True,
        start_step: int | None = None,
    ):
        self.is_lead = is_lead
        self._jsonl = None
        self._events = None
        if not is_lead:
            return
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / METRICS_FILE
        if start_step is not None and self.path.exists():
            _truncate(self.path, start_step)
        self._jsonl = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            self._events = EventWriter(run_dir / TENSORBOARD_DIR, purge_step=start_step)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Logs ``metrics`` (name -> scalar: float, numpy or jax 0-d array) at ``step``.

        Pass host values (``jax.device_get(metrics)``) to fetch them in one transfer.
        """
        if not self.is_lead:
            return
        scalars = _scalars(metrics)
        self._jsonl.write(json.dumps({"step": step, "time": time.time(), **scalars}) + "\n")
        self._jsonl.flush()
        if self._events is not None:
            self._events.scalars(step, scalars)
            self._events.flush()

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        """An image (uint8[H, W, 3], e.g. a sample grid) to TensorBoard, when it is enabled."""
        if self._events is not None:
            self._events.image(step, tag, image)
            self._events.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._events is not None:
            self._events.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def format_line(step: int, metrics: Mapping[str, Any], keys: Sequence[str] | None = None) -> str:
    """``step     12  loss   -0.01234  und/reward_mean        0.5``: the chosen ``keys`` (default:
    all, in order) at 4 significant digits, each value right-aligned in 10 columns so that
    successive lines line up; a missing key shows as ``-``.
    """
    parts = [f"step {step:>6d}"]
    for key in metrics if keys is None else keys:
        text = f"{float(np.asarray(metrics[key])):.4g}" if key in metrics else "-"
        parts.append(f"{key} {text:>10}")
    return "  ".join(parts)
