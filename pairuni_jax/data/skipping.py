"""``on_error: skip`` in the map step: records that fail while being encoded are dropped, counted.

Validation catches bad records before training, but a record can still fail when its batch row
is built (an image replaced after the scan, a tokenizer that rejects a text). Under
``on_error: skip`` the encoder then yields a ``SkippedRecord`` in place of the row, and
``DropSkipped``, placed after the worker processes and before batching, drops it: it reports the
issue on stderr and counts it by kind in the process that trains, so batches stay full and the
counts reach the metrics.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import grain

from pairuni_jax.data import records

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class SkippedRecord:
    """What the map step yields for a record that failed to encode under ``on_error: skip``."""

    issue: records.Issue


def located(
    record: records.PairRecord, field: str, kind: records.ErrorKind, fn: Callable[..., T], *args
) -> T:
    """``fn(*args)``, with any failure re-raised as a ``DataError`` at the record's file, line
    and ``field``."""
    try:
        return fn(*args)
    except Exception as e:
        message = f"{type(e).__name__}: {e}"
        issue = records.Issue(kind, record.file, record.line, field, message)
        raise records.DataError([issue]) from e


class DropSkipped(grain.transforms.Filter):
    """Drops ``SkippedRecord`` markers; ``errors_by_kind`` counts them (``ErrorKind`` values)."""

    def __init__(self):
        self.errors_by_kind: collections.Counter = collections.Counter()

    @property
    def skipped(self) -> int:
        return sum(self.errors_by_kind.values())

    def filter(self, element: Any) -> bool:
        if isinstance(element, SkippedRecord):
            self.errors_by_kind[element.issue.kind.value] += 1
            print(f"skipping a record (data.on_error=skip): {element.issue}", file=sys.stderr)
            return False
        return True
