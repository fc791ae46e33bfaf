"""What an evaluation reports: the summary dict of ``report.json``, per-item lines, the printed
table and the ``eval/...`` training metrics.

``report.json``::

    {"understanding": {"accuracy", "count", "correct", "no_letter", "skipped",
                       "by_tag": {tag: {"accuracy", "count", "correct", "no_letter"}}},
     "generation": {"count", "prompts", "images_per_prompt", "hps_mean", "hps_std", "skipped",
                    "by_tag": {tag: {"count", "hps_mean", "hps_std"}}},
     "model": ..., "step": ..., "settings": {...}}

``accuracy`` is the mean of the per-question verdicts, ``no_letter`` the fraction of answers with
no option letter, ``hps_std`` the population standard deviation; a side not evaluated is null,
and so are the HPS values without a reward model. Tags are sorted; every count adds up over them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from pairuni_jax.evaluation.generation import GeneratedImage
from pairuni_jax.evaluation.understanding import Answer
from pairuni_jax.logging.samples import save_image_grid

REPORT_FILE = "report.json"
PREDICTIONS_FILE = "predictions.jsonl"
GENERATIONS_FILE = "generations.jsonl"
IMAGES_DIR = "images"
GRID_FILE = "grid.png"

T = TypeVar("T")


def _by_tag(items: Iterable[T], tag: Callable[[T], str]) -> dict[str, list[T]]:
    groups: dict[str, list[T]] = defaultdict(list)
    for item in items:
        groups[tag(item)].append(item)
    return dict(sorted(groups.items()))


def _answer_stats(answers: Sequence[Answer]) -> dict[str, Any]:
    correct = sum(a.correct for a in answers)
    return {
        "accuracy": correct / len(answers),
        "count": len(answers),
        "correct": correct,
        "no_letter": sum(a.prediction is None for a in answers) / len(answers),
    }


def understanding_summary(answers: Sequence[Answer], skipped: int = 0) -> dict[str, Any]:
    """Accuracy, count and no-letter fraction overall and by tag; ``skipped``: bad questions."""
    groups = _by_tag(answers, lambda a: a.question.tag)
    by_tag = {tag: _answer_stats(group) for tag, group in groups.items()}
    return {**_answer_stats(answers), "skipped": skipped, "by_tag": by_tag}


def _hps_stats(images: Sequence[GeneratedImage]) -> dict[str, Any]:
    scores = [i.hps for i in images if i.hps is not None]
    if not scores:
        return {"count": len(images), "hps_mean": None, "hps_std": None}
    values = np.asarray(scores, np.float64)
    return {"count": len(images), "hps_mean": float(values.mean()), "hps_std": float(values.std())}


def generation_summary(
    images: Sequence[GeneratedImage], images_per_prompt: int, skipped: int = 0
) -> dict[str, Any]:
    """Image count and HPS mean / std overall and by tag; ``skipped``: bad prompts."""
    groups = _by_tag(images, lambda i: i.prompt.tag)
    return {
        **_hps_stats(images),
        "prompts": len({i.prompt.id for i in images}),
        "images_per_prompt": images_per_prompt,
        "skipped": skipped,
        "by_tag": {tag: _hps_stats(group) for tag, group in groups.items()},
    }


def training_metrics(
    understanding: Mapping[str, Any] | None, generation: Mapping[str, Any] | None
) -> dict[str, float]:
    """The summaries as flat ``eval/...`` scalars for ``MetricsWriter.write``."""
    metrics = {}
    if understanding is not None:
        metrics["eval/und/accuracy"] = understanding["accuracy"]
        metrics["eval/und/no_letter"] = understanding["no_letter"]
        for tag, stats in understanding["by_tag"].items():
            metrics[f"eval/und/accuracy/{tag}"] = stats["accuracy"]
    if generation is not None and generation["hps_mean"] is not None:
        metrics["eval/gen/hps_mean"] = generation["hps_mean"]
        metrics["eval/gen/hps_std"] = generation["hps_std"]
        for tag, stats in generation["by_tag"].items():
            metrics[f"eval/gen/hps_mean/{tag}"] = stats["hps_mean"]
    return metrics


def format_table(report: Mapping[str, Any]) -> str:
    """The report as a small table, overall first, then one row per tag."""
    lines = []
    und, gen = report.get("understanding"), report.get("generation")
    if und is not None:
        lines.append(f"{'understanding':<28} {'questions':>9} {'accuracy':>9} {'no letter':>9}")
        for name, s in [("all", und), *und["by_tag"].items()]:
            row = f"{s['count']:>9d} {s['accuracy']:>9.2%} {s['no_letter']:>9.2%}"
            lines.append(f"  {name[:26]:<26} {row}")
        if und["skipped"]:
            lines.append(f"  ({und['skipped']} bad question(s) skipped)")
    if gen is not None:
        lines.append(f"{'generation':<28} {'images':>9} {'hps mean':>9} {'hps std':>9}")
        for name, s in [("all", gen), *gen["by_tag"].items()]:
            hps = "-" if s["hps_mean"] is None else f"{s['hps_mean']:>9.4f} {s['hps_std']:>9.4f}"
            lines.append(f"  {name[:26]:<26} {s['count']:>9d} {hps:>19}")
        if gen["skipped"]:
            lines.append(f"  ({gen['skipped']} bad prompt(s) skipped)")
    return "\n".join(lines)


def image_name(image: GeneratedImage) -> str:
    """``images/00012_3.png``: image 3 of prompt 12 (0-based, file order)."""
    return f"{IMAGES_DIR}/{image.prompt.id:05d}_{image.index}.png"


class ImageWriter:
    """An ``ImageSink`` that saves each image as ``out/images/PPPPP_K.png`` and keeps the images
    of the first ``grid_prompts`` prompts for ``save_grid``."""

    def __init__(self, out: Path, grid_prompts: int = 8):
        self.out = out
        self.grid_prompts = grid_prompts
        self.kept: list[tuple[GeneratedImage, np.ndarray]] = []
        (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)

    def __call__(self, image: GeneratedImage, pixels: np.ndarray) -> None:
        Image.fromarray(pixels).save(self.out / image_name(image))
        if image.prompt.id < self.grid_prompts:
            self.kept.append((image, pixels))

    def save_grid(self, images_per_prompt: int) -> Path | None:
        """``out/grid.png``: one row per kept prompt, captioned with the prompt and HPS."""
        if not self.kept:
            return None

        def caption(image: GeneratedImage) -> str:
            return image.prompt.prompt + ("" if image.hps is None else f" | hps {image.hps:.3f}")

        path = self.out / GRID_FILE
        pixels = np.stack([p for _, p in self.kept])
        captions = [caption(i) for i, _ in self.kept]
        save_image_grid(path, pixels, captions, columns=images_per_prompt)
        return path


def write_outputs(
    out: Path,
    report: Mapping[str, Any],
    answers: Sequence[Answer] = (),
    images: Sequence[GeneratedImage] = (),
) -> None:
    """``report.json``, and one line per question (``predictions.jsonl``) and per image
    (``generations.jsonl``) when there are any."""
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if answers:
        lines = (
            {
                "id": a.question.id,
                "line": a.question.line,
                "tag": a.question.tag,
                "output": a.output,
                "prediction": a.prediction,
                "answer": a.question.answer,
                "correct": a.correct,
            }
            for a in answers
        )
        _write_jsonl(out / PREDICTIONS_FILE, lines)
    if images:
        lines = (
            {
                "prompt_id": i.prompt.id,
                "line": i.prompt.line,
                "tag": i.prompt.tag,
                "prompt": i.prompt.prompt,
                "image": image_name(i),
                "hps": i.hps,
            }
            for i in images
        )
        _write_jsonl(out / GENERATIONS_FILE, lines)


def _write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
