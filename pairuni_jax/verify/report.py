"""The result of ``pairuni verify`` and its Markdown form (``REPORT.md``)."""

from __future__ import annotations

import dataclasses
import datetime
import platform
from pathlib import Path

import numpy as np

from pairuni_jax.verify.checks import Check, Status
from pairuni_jax.verify.stages import StageRecord, format_bytes

MARKS = {Status.PASS: "✅ pass", Status.FAIL: "❌ FAIL", Status.MEASURED: "📏 measured"}
MARKS[Status.SKIPPED] = "⏭ skipped"


@dataclasses.dataclass
class VerifyReport:
    """source: what was verified (hub id or directory) and its layout; model: its sizes in words;
    dtype: the JAX compute dtype (the references run in fp32); backend: JAX's platform;
    perturbed: the checkpoint key ``--perturb-converted`` changed (and by how much), or None;
    images: uint8[s, 3s, 3], the generated images side by side (``janus_checks.side_by_side``);
    picture: its file name once ``write_report`` has saved it."""

    source: str
    source_format: str
    model: str
    dtype: str
    backend: str
    reference_device: str
    checks: list[Check] = dataclasses.field(default_factory=list)
    stages: list[StageRecord] = dataclasses.field(default_factory=list)
    perturbed: str | None = None
    images: np.ndarray | None = None
    picture: str | None = None

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.failed]

    def summary(self) -> str:
        """One line: what passed or which checks failed (and, when perturbed, what caught it)."""
        counts = {s: sum(c.status is s for c in self.checks) for s in Status}
        tally = ", ".join(f"{n} {s.value.lower()}" for s, n in counts.items() if n)
        if self.perturbed is not None:
            if self.failed:
                names = ", ".join(c.name for c in self.failed)
                return f"self-check: the perturbation of {self.perturbed} was caught by: {names}"
            return (
                f"self-check: the perturbation of {self.perturbed} was NOT caught by any check "
                f"({tally}): the tolerances are too loose for it"
            )
        if self.failed:
            return f"FAILED: {', '.join(c.name for c in self.failed)} ({tally})"
        if any(c.status is Status.MEASURED for c in self.checks):
            return f"no check failed ({tally}; measured values are reported, not judged)"
        return f"all checks passed ({tally})"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(report: VerifyReport) -> str:
    """The report as a Markdown page: header, one table row per check, stages, notes."""
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    judged = "judged" if report.dtype == "fp32" else "measured, not judged (bf16 drift)"
    lines = [
        "# pairuni verify",
        "",
        f"- source: `{report.source}` ({report.source_format} layout), {report.model}",
        f"- JAX: {report.dtype} on {report.backend}; references (transformers, open_clip): fp32 "
        f"on {report.reference_device}; results {judged}",
        f"- host: {platform.node()}, {platform.platform()}, {when}",
        f"- **{report.summary()}**",
        "",
        "| check | what is compared | result | measured | tolerance |",
        "|---|---|---|---|---|",
    ]
    for c in report.checks:
        lines.append(
            f"| `{c.name}` | {_cell(c.title)} | {MARKS[c.status]} | {_cell(c.measured)} "
            f"| {_cell(c.tolerance)} |"
        )
    details = [c for c in report.checks if c.detail]
    if details:
        lines += ["", "Notes:", ""]
        lines += [f"- `{c.name}`: {c.detail}" for c in details]
    if report.picture:
        lines += [
            "",
            "JAX image | transformers' image | 10 × |Δ| of the two decodes of transformers' tokens:",
            "",
            f"![generated images]({report.picture})",
        ]
    lines += [
        "",
        "## Stages",
        "",
        "| stage | seconds | host peak RSS | accelerator peak |",
        "|---|---|---|---|",
    ]
    for s in report.stages:
        lines.append(
            f"| {s.name} | {s.seconds:.1f} | {format_bytes(s.host_peak_bytes)} "
            f"| {format_bytes(s.device_peak_bytes)} |"
        )
    lines += [
        "",
        "Tolerances: in fp32, logits, features and pixels within 1e-4 × max(1, scale) of the "
        "reference (scale = max |reference|), HPS cosines within 1e-4, greedy tokens identical. "
        "In bf16 the same quantities are measured against the fp32 references and reported, "
        "not failed. JAX stage times include compilation.",
        "",
    ]
    return "\n".join(lines)


def picture_path(out: Path) -> Path:
    """Where ``write_report`` puts the side-by-side image: ``REPORT.md`` → ``REPORT.png``."""
    return out.with_suffix(".png")


def write_report(report: VerifyReport, out: Path) -> None:
    """Writes ``out`` (Markdown) and, when the report has images, ``picture_path(out)``."""
    from PIL import Image

    out.parent.mkdir(parents=True, exist_ok=True)
    if report.images is not None:
        Image.fromarray(report.images).save(picture_path(out))
        report.picture = picture_path(out).name
    out.write_text(to_markdown(report))
