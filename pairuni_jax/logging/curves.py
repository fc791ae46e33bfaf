"""Training curves as one picture: ``RUN_DIR/curves.png``, redrawn at every checkpoint.

One panel per quantity a user checks first (``PANELS``): each side's reward, answer accuracy,
the KL to the reference (only when the run logs it, i.e. β > 0), entropy, clip fraction and
learning rate, against the step. Each panel shows the logged values as a thin line and their
moving average as a thick one. The panel titles are also stored in the PNG's text metadata
(``Panels``, separated by ``; ``) so a program can read what the picture shows.

Drawn with matplotlib's object API on the Agg canvas (no pyplot state, no display needed);
matplotlib is imported only when a picture is drawn.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from pairuni_jax.logging.metrics import METRICS_FILE, read_metrics

CURVES_FILE = "curves.png"
PANEL_SEPARATOR = "; "


@dataclasses.dataclass(frozen=True)
class Panel:
    """One plot: ``title`` over the metrics ``keys`` (one line each, labelled when several)."""

    title: str
    keys: tuple[str, ...]


PANELS = (
    Panel("understanding reward", ("und/reward_mean",)),
    Panel("generation reward", ("gen/reward_mean",)),
    Panel("answer accuracy", ("und/accuracy",)),
    Panel("KL to the reference", ("und/kl", "gen/kl")),
    Panel("entropy", ("und/entropy", "gen/entropy")),
    Panel("clip fraction", ("und/clip_fraction", "gen/clip_fraction")),
    Panel("learning rate", ("learning_rate",)),
)
COLUMNS = 4
PANEL_INCHES = (4.0, 2.8)
DPI = 100


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """The mean of each value and the up to ``window - 1`` values before it: float64[len]."""
    sums = np.cumsum(np.concatenate([[0.0], values]))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def draw_curves(
    rows: Sequence[Mapping[str, float]], path: str | Path, panels: Sequence[Panel] = PANELS
) -> list[str]:
    """Draws the panels that have data in ``rows`` (metrics lines with a ``step``) into the PNG
    at ``path`` (replaced atomically). Returns the titles of the panels drawn, in order."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = [p for p in panels if any(k in row for row in rows for k in p.keys)]
    columns = max(1, min(COLUMNS, len(shown)))
    lines = max(1, math.ceil(len(shown) / columns))
    figure = Figure(figsize=(PANEL_INCHES[0] * columns, PANEL_INCHES[1] * lines), dpi=DPI)
    FigureCanvasAgg(figure)
    window = max(1, len(rows) // 20)
    for i, panel in enumerate(shown):
        axes = figure.add_subplot(lines, columns, i + 1)
        for n, key in enumerate(panel.keys):
            points = [(row["step"], row[key]) for row in rows if key in row]
            if not points:
                continue
            steps, values = map(np.asarray, zip(*points))
            colour = f"C{n}"
            label = key if len(panel.keys) > 1 else None
            axes.plot(steps, values, color=colour, alpha=0.3, linewidth=0.8)
            axes.plot(steps, moving_average(values, window), color=colour, label=label, lw=1.8)
        axes.set_title(panel.title, fontsize=10)
        axes.set_xlabel("step", fontsize=8)
        axes.tick_params(labelsize=7)
        axes.grid(alpha=0.3)
        if len(panel.keys) > 1:
            axes.legend(fontsize=7)
    figure.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    titles = [p.title for p in shown]
    figure.savefig(tmp, format="png", metadata={"Panels": PANEL_SEPARATOR.join(titles)})
    tmp.replace(path)
    return titles


def draw_run_curves(run_dir: str | Path) -> Path:
    """``run_dir/curves.png`` from ``run_dir/metrics.jsonl`` (the whole run, resumes included)."""
    run_dir = Path(run_dir)
    out = run_dir / CURVES_FILE
    draw_curves([row for _, row in read_metrics(run_dir / METRICS_FILE)], out)
    return out
