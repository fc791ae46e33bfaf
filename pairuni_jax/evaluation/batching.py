"""Fixed-shape evaluation batches: padding, placement on devices, and a loop with one batch in
flight (the host prepares batch i + 1 while the device runs batch i)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from pairuni_jax import sharding

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where batches and results live: the default device (``mesh=None``), or a mesh with the
    batch rows over ``data × fsdp`` when they divide (else replicated) and the results
    replicated, so that every host can read them."""

    mesh: Mesh | None = None

    @property
    def out_sharding(self) -> NamedSharding | None:
        return None if self.mesh is None else sharding.replicated(self.mesh)

    def put(self, x: np.ndarray) -> jax.Array:
        """A host array of the global batch (the same on every host) onto the devices."""
        if self.mesh is None:
            return jax.device_put(x)
        ways = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        spec = sharding.logical_to_spec(("batch",)) if x.shape[0] % ways == 0 else PartitionSpec()
        target = NamedSharding(self.mesh, spec)
        return jax.make_array_from_callback(x.shape, target, lambda index: x[index])


DEFAULT_PLACEMENT = Placement()


def padded_chunks(items: Sequence[T], size: int) -> Iterator[tuple[list[T], int]]:
    """Chunks of exactly ``size`` items, the last one padded by repeating its last item, with
    the number of real items in each (so every batch has the same shape)."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    for start in range(0, len(items), size):
        chunk = list(items[start : start + size])
        yield chunk + [chunk[-1]] * (size - len(chunk)), len(chunk)


@dataclasses.dataclass
class Throughput:
    """Items done and seconds spent, overall and after the first batch (which compiles)."""

    items: int = 0
    seconds: float = 0.0
    first_batch_seconds: float = 0.0
    first_batch_items: int = 0

    def line(self, unit: str) -> str:
        text = f"{self.items} {unit}s in {self.seconds:.1f} s ({self.items / self.seconds:.2f} {unit}s/s"
        later = self.items - self.first_batch_items
        if later > 0:
            rate = later / max(self.seconds - self.first_batch_seconds, 1e-9)
            text += f"; {rate:.2f} {unit}s/s after the first batch, which compiles"
        return text + ")"


def run_pipelined(
    chunks: Iterator[tuple[list[T], int]],
    dispatch: Callable[[list[T], int], Any],
    finish: Callable[[list[T], int, Any], None],
    *,
    total: int,
    unit: str,
    desc: str,
    show: bool = True,
) -> Throughput:
    """For each padded chunk: ``dispatch(chunk, batch_index)`` starts the device work (JAX
    returns before it is done) and ``finish(chunk, n_real, outputs)`` reads the results of the
    previous chunk meanwhile. Shows a tqdm bar of ``total`` items; returns the throughput."""
    stats = Throughput()
    start = time.perf_counter()
    pending = None
    with tqdm(total=total, unit=unit, desc=desc, disable=not show, leave=False) as bar:

        def drain() -> None:
            chunk, real, outputs = pending
            finish(chunk, real, outputs)
            bar.update(real)
            stats.items += real
            if not stats.first_batch_items:
                stats.first_batch_items = real
                stats.first_batch_seconds = time.perf_counter() - start

        for index, (chunk, real) in enumerate(chunks):
            outputs = dispatch(chunk, index)
            if pending is not None:
                drain()
            pending = (chunk, real, outputs)
        if pending is not None:
            drain()
    stats.seconds = time.perf_counter() - start
    return stats
