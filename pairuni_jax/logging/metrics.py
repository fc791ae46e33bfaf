"""Training metrics to ``metrics.jsonl``, TensorBoard and Weights & Biases (lead host only), and a
stdout line.

``MetricsWriter`` fans each logged step out to its destinations, each a ``MetricWriter``
(``scalars``, ``image``, ``close``): ``JsonlWriter`` always, ``TensorBoardWriter`` (tensorboardX)
unless turned off, ``WandbWriter`` when ``logging.wandb`` is set.

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
from typing import Any, Protocol

import numpy as np

from pairuni_jax.logging.tensorboard import TensorBoardWriter
from pairuni_jax.logging.wandb_writer import WandbConfig, WandbWriter

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


def read_metrics(path: str | os.PathLike) -> list[tuple[str, dict[str, Any]]]:
    """The complete lines of a ``metrics.jsonl``, each with its parsed row; a line torn by an
    interrupted run (no newline: the last one) is left out. Raises ``ValueError`` naming
    ``path:line`` for a line that is not a metrics row with a ``step``."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith("\n"):
                break
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not a JSON line ({e})") from e
            if not isinstance(row, dict) or "step" not in row:
                raise ValueError(f"{path}:{number}: not a metrics line with a step")
            rows.append((line, row))
    return rows


def _truncate(path: Path, start_step: int) -> None:
    """Keep the complete lines of ``path`` with a step below ``start_step`` (atomic rewrite)."""
    kept = [line for line, row in read_metrics(path) if row["step"] < start_step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)


class MetricWriter(Protocol):
    """One destination of training metrics."""

    def scalars(self, step: int, values: Mapping[str, float]) -> None: ...

    def image(self, step: int, tag: str, image: np.ndarray) -> None: ...

    def close(self) -> None: ...


class JsonlWriter:
    """``metrics.jsonl``: one line per logged step, flushed as written (images are not kept).

    ``start_step`` drops the lines at steps >= ``start_step`` (see ``MetricsWriter``).
    """

    def __init__(self, path: Path, *, start_step: int | None = None):
        if start_step is not None and path.exists():
            _truncate(path, start_step)
        self.path = path
        self._file = open(path, "a", encoding="utf-8")

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        self._file.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")
        self._file.flush()

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        pass

    def close(self) -> None:
        self._file.close()


class MetricsWriter:
    """Writes each logged step's scalar metrics to every destination; a no-op (no files) when
    not ``is_lead``.

    ``start_step`` (for a resumed run: the first step it will log) drops the lines at steps
    >= ``start_step`` that the interrupted run wrote after its last checkpoint, and tells
    TensorBoard to discard those points, so each step appears once.
    ``wandb``: also log to Weights & Biases; ``config`` (the run config as a dict) is stored
    with the W&B run.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        is_lead: bool = True,
        tensorboard: bool = True,
        start_step: int | None = None,
        wandb: WandbConfig | None = None,
        config: Mapping[str, Any] | None = None,
    ):
        self.is_lead = is_lead
        self.writers: list[MetricWriter] = []
        if not is_lead:
            return
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / METRICS_FILE
        self.writers.append(JsonlWriter(self.path, start_step=start_step))
        if tensorboard:
            self.writers.append(TensorBoardWriter(run_dir / TENSORBOARD_DIR, purge_step=start_step))
        if wandb is not None:
            self.writers.append(WandbWriter(run_dir, wandb, config))

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Logs ``metrics`` (name -> scalar: float, numpy or jax 0-d array) at ``step``.

        Pass host values (``jax.device_get(metrics)``) to fetch them in one transfer.
        """
        if not self.is_lead:
            return
        scalars = _scalars(metrics)
        for writer in self.writers:
            writer.scalars(step, scalars)

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        """An image (uint8[H, W, 3], e.g. a sample grid) to the destinations that keep images."""
        for writer in self.writers:
            writer.image(step, tag, image)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()

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
