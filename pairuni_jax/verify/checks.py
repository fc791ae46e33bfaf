"""One verification check: what was compared, what was measured, the tolerance and the verdict.

Two kinds of comparison cover every check of ``pairuni verify``:

- ``compare_arrays``: max |Δ| of two float arrays against ``atol + rtol · max(1, scale)``, scale
  being max |reference| (logits, features, pixels: ``rtol``; HPS cosines: ``atol``);
- ``compare_tokens``: token sequences that must be identical (greedy decoding), with the index
  of the first divergence.

A check is judged (pass or fail) in fp32. In bf16 the same numbers are measured and reported,
never failed: bf16 drifts from the fp32 reference by design.
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np


class Status(enum.Enum):
    PASS = "pass"
    FAIL = "FAIL"
    MEASURED = "measured"  # reported, not judged (bf16 drift, inconclusive golden comparison)
    SKIPPED = "skipped"


@dataclasses.dataclass(frozen=True)
class Check:
    """A line of the report.

    name: stable identifier (``text_logits``, ``image_tokens_all``, ...), what the CLI prints
      when the check fails; title: what was compared, for people.
    measured / tolerance: the numbers, as text; detail: a longer note (answers, reasons).
    """

    name: str
    title: str
    status: Status
    measured: str
    tolerance: str
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status is Status.FAIL


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """``max |Δ| ≤ atol + rtol · max(1, max |reference|)``."""

    rtol: float = 0.0
    atol: float = 0.0

    def bound(self, scale: float) -> float:
        return self.atol + self.rtol * max(1.0, scale)

    def describe(self) -> str:
        parts = []
        if self.rtol:
            parts.append(f"{self.rtol:.0e} × max(1, scale)")
        if self.atol:
            parts.append(f"{self.atol:.0e}")
        return "max|Δ| ≤ " + " + ".join(parts or ["0"])


def _verdict(ok: bool, judged: bool) -> Status:
    if not judged:
        return Status.MEASURED
    return Status.PASS if ok else Status.FAIL


def _tolerance(text: str, judged: bool) -> str:
    return text if judged else f"not judged (fp32: {text})"


def compare_arrays(
    name: str,
    title: str,
    got: np.ndarray,
    want: np.ndarray,
    tolerance: Tolerance,
    *,
    judged: bool = True,
) -> Check:
    """``got`` (JAX) against ``want`` (the reference), both float arrays of one shape."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return Check(
            name,
            title,
            Status.FAIL,
            f"shape {list(got.shape)} vs reference {list(want.shape)}",
            tolerance.describe(),
        )
    finite = bool(np.all(np.isfinite(got)))
    diff = float(np.max(np.abs(got - want))) if got.size and finite else float("inf")
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    bound = tolerance.bound(scale)
    measured = f"max|Δ| {diff:.2e} (scale {scale:.3g}, relative {diff / max(scale, 1e-30):.1e})"
    if not finite:
        measured = "non-finite values in the JAX output"
    return Check(
        name,
        title,
        _verdict(finite and diff <= bound, judged),
        measured,
        _tolerance(f"{tolerance.describe()} = {bound:.1e}", judged),
    )


def first_divergence(got: np.ndarray, want: np.ndarray) -> int | None:
    """The first index where two token sequences differ (a length difference counts), or None."""
    n = min(len(got), len(want))
    unequal = np.flatnonzero(np.asarray(got[:n]) != np.asarray(want[:n]))
    if unequal.size:
        return int(unequal[0])
    return None if len(got) == len(want) else n


def compare_tokens(
    name: str,
    title: str,
    got: np.ndarray,
    want: np.ndarray,
    *,
    judged: bool = True,
    detail: str = "",
) -> Check:
    """Token sequences ``got`` (JAX) and ``want`` (reference) must be identical."""
    got, want = np.asarray(got).reshape(-1), np.asarray(want).reshape(-1)
    at = first_divergence(got, want)
    if at is None:
        measured = f"{len(want)}/{len(want)} identical"
    else:
        same = int(np.sum(got[: min(len(got), len(want))] == want[: min(len(got), len(want))]))
        measured = (
            f"{same}/{len(want)} equal, first divergence at token {at} "
            f"(JAX {_at(got, at)}, reference {_at(want, at)})"
        )
    status = _verdict(at is None, judged)
    return Check(name, title, status, measured, _tolerance("identical", judged), detail)


def _at(tokens: np.ndarray, index: int) -> str:
    return str(int(tokens[index])) if index < len(tokens) else "end"


def skipped(name: str, title: str, reason: str) -> Check:
    return Check(name, title, Status.SKIPPED, "—", "—", reason)
