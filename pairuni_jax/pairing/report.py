"""What ``pairuni data pair`` made: counts by kind and tag, and the similarity histogram (as text
and as a PNG drawn with matplotlib)."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

HISTOGRAM_BINS = 20  # over [0, 1]: 0.05 wide
BAR_WIDTH = 40  # characters of the longest text bar


@dataclasses.dataclass
class PairingSummary:
    """Counts of one run. Tags are counted per input side; ``similarities`` are the retrieved
    pairs' cosines, float32[M]."""

    understanding_in: int = 0
    generation_in: int = 0
    understanding_skipped: int = 0
    generation_skipped: int = 0
    errors_by_kind: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    candidates: int = 0  # records that carry their own completion
    aligned_from_understanding: collections.Counter = dataclasses.field(
        default_factory=collections.Counter
    )
    aligned_from_generation: collections.Counter = dataclasses.field(
        default_factory=collections.Counter
    )
    retrieved_generation_tags: collections.Counter = dataclasses.field(
        default_factory=collections.Counter
    )
    retrieved_understanding_tags: collections.Counter = dataclasses.field(
        default_factory=collections.Counter
    )
    unmatched_generation: collections.Counter = dataclasses.field(
        default_factory=collections.Counter
    )
    unused_understanding: collections.Counter = dataclasses.field(
        default_factory=collections.Counter
    )
    similarities: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def aligned(self) -> int:
        return self.aligned_from_understanding.total() + self.aligned_from_generation.total()

    @property
    def retrieved(self) -> int:
        return len(self.similarities)

    def text(self) -> str:
        """The multi-line summary printed at the end of a run."""
        out = [
            f"records in: understanding {self.understanding_in} (skipped "
            f"{self.understanding_skipped}), generation {self.generation_in} (skipped "
            f"{self.generation_skipped})",
        ]
        if self.errors_by_kind:
            out.append(f"errors by kind: {_counts(self.errors_by_kind)}")
        out += [
            f"pairs: {self.aligned + self.retrieved} (aligned {self.aligned}, retrieved "
            f"{self.retrieved})",
            f"aligned: {self.aligned} of {self.candidates} records with their own completion",
            f"  from understanding: {_counts(self.aligned_from_understanding)}",
            f"  from generation: {_counts(self.aligned_from_generation)}",
            f"retrieved: {self.retrieved}",
            f"  generation tags: {_counts(self.retrieved_generation_tags)}",
            f"  understanding tags: {_counts(self.retrieved_understanding_tags)}",
            f"unmatched generation records: {self.unmatched_generation.total()} "
            f"({_counts(self.unmatched_generation)})",
            f"unused understanding records: {self.unused_understanding.total()} "
            f"({_counts(self.unused_understanding)})",
            "similarity of retrieved pairs:",
            text_histogram(self.similarities),
            "options:",
        ]
        out += [f"  {key}: {value}" for key, value in self.options.items()]
        return "\n".join(out)


def histogram(
    similarities: np.ndarray, bins: int = HISTOGRAM_BINS
) -> tuple[np.ndarray, np.ndarray]:
    """Counts int64[bins] over equal bins of [0, 1] and the bin edges float64[bins + 1]."""
    return np.histogram(np.asarray(similarities, np.float64), bins=bins, range=(0.0, 1.0))


def text_histogram(similarities: np.ndarray, bins: int = HISTOGRAM_BINS) -> str:
    """One line per non-empty bin, from the first to the last one with pairs."""
    counts, edges = histogram(similarities, bins)
    if not counts.any():
        return "  (no retrieved pairs)"
    nonzero = np.flatnonzero(counts)
    peak = counts.max()
    lines = []
    for i in range(nonzero[0], nonzero[-1] + 1):
        bar = "#" * max(1 if counts[i] else 0, round(BAR_WIDTH * counts[i] / peak))
        lines.append(f"  [{edges[i]:.2f}, {edges[i + 1]:.2f}) {counts[i]:>8d} {bar}")
    stats = np.asarray(similarities, np.float64)
    lines.append(
        f"  min {stats.min():.4f}  median {np.median(stats):.4f}  mean {stats.mean():.4f}  "
        f"max {stats.max():.4f}"
    )
    return "\n".join(lines)


def save_histogram_png(
    path: str | Path, similarities: np.ndarray, threshold: float, title: str
) -> None:
    """The retrieved pairs' similarity histogram with the threshold marked, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    from matplotlib import pyplot as plt

    counts, edges = histogram(similarities)
    figure, axes = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    axes.bar(
        edges[:-1], counts, width=np.diff(edges), align="edge", color="#4c72b0", edgecolor="white"
    )
    axes.axvline(threshold, color="#c44e52", linestyle="--", label=f"threshold {threshold:g}")
    axes.set_xlim(0.0, 1.0)
    axes.set_xlabel("image-image cosine similarity")
    axes.set_ylabel("retrieved pairs")
    axes.set_title(title)
    axes.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)


def _counts(counts: Mapping[str, int]) -> str:
    if not counts:
        return "none"
    return ", ".join(f"{key}={n}" for key, n in sorted(counts.items()))
