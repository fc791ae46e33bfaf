"""Wall time and peak memory of each stage of a verification run.

Host memory is the peak resident set size during the stage, sampled from ``/proc/self/statm``
every 20 ms by a background thread (Linux; elsewhere the process's lifetime peak from
``getrusage``). Accelerator memory is the JAX device's ``peak_bytes_in_use`` (a lifetime peak:
XLA cannot reset it) for JAX stages, and PyTorch's ``max_memory_allocated`` (reset per stage) for
reference stages on CUDA. Neither exists on CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

STATM = Path("/proc/self/statm")
SAMPLE_SECONDS = 0.02


@dataclasses.dataclass(frozen=True)
class StageRecord:
    """seconds: wall time; host_peak_bytes: peak RSS during the stage; device_peak_bytes: see the
    module docstring (None where there is no accelerator)."""

    name: str
    seconds: float
    host_peak_bytes: int
    device_peak_bytes: int | None = None


def _rss_bytes() -> int:
    try:
        return int(STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _PeakSampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak = _rss_bytes()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(SAMPLE_SECONDS):
            self.peak = max(self.peak, _rss_bytes())

    def finish(self) -> int:
        self._done.set()
        self.join()
        return max(self.peak, _rss_bytes())


def _jax_device_peak() -> int | None:
    import jax

    stats = jax.local_devices()[0].memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _torch_cuda_peak(reset: bool) -> int | None:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats()
        return None
    return int(torch.cuda.max_memory_allocated())


class StageMeter:
    """Collects a ``StageRecord`` per ``with meter.stage(name, device=...)`` block.

    device: ``"jax"`` or ``"torch"`` to record that library's accelerator peak, None for none.
    log: print ``[verify] name ...`` lines (to stderr) as stages start and end.
    """

    def __init__(self, log: bool = True):
        self.records: list[StageRecord] = []
        self.log = log

    @contextlib.contextmanager
    def stage(self, name: str, device: str | None = None) -> Iterator[None]:
        if self.log:
            print(f"[verify] {name} ...", file=sys.stderr, flush=True)
        if device == "torch":
            _torch_cuda_peak(reset=True)
        sampler = _PeakSampler()
        sampler.start()
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            host = sampler.finish()
        peak = {"jax": _jax_device_peak, "torch": lambda: _torch_cuda_peak(reset=False)}
        record = StageRecord(name, seconds, host, peak[device]() if device else None)
        self.records.append(record)
        if self.log:
            print(
                f"[verify] {name}: {seconds:.1f} s, host peak {format_bytes(host)}",
                file=sys.stderr,
                flush=True,
            )


def format_bytes(n: int | None) -> str:
    if n is None:
        return "—"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n / 2**10:.0f} KiB"
