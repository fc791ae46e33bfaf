"""``pairuni verify``: the converted checkpoints against the reference implementations.

``run_verify(VerifyOptions(janus=SRC, hps=FILE))`` converts with the project's converters, runs
transformers' Janus and open_clip + hpsv2's preprocessing on the same inputs, and returns a
``VerifyReport`` (one ``Check`` per comparison). The reference libraries (PyTorch, torchvision,
open_clip) are imported only when a run starts.
"""

from pairuni_jax.verify.checks import Check, Status
from pairuni_jax.verify.golden import GoldenMode
from pairuni_jax.verify.report import VerifyReport, to_markdown, write_report
from pairuni_jax.verify.runner import VerifyError, VerifyOptions, run_verify

__all__ = [
    "Check",
    "GoldenMode",
    "Status",
    "VerifyError",
    "VerifyOptions",
    "VerifyReport",
    "run_verify",
    "to_markdown",
    "write_report",
]
