"""The inputs of ``pairuni data pair``: understanding and generation records (pair halves).

One JSON object per line, in the format of one side of a pair record (``data/records.py``)::

    understanding: {"image_path": ..., "question": "...\\nA. ...\\nB. ...", "answer": "A",
                    "prompt": <optional caption>, "tag": <optional>}
    generation:    {"image_path": ..., "prompt": ..., "question": <optional>,
                    "answer": <optional>, "tag": <optional>}

An understanding record with a caption (``prompt``), or a generation record with a ``question``
and ``answer``, carries its own completion and can form an aligned pair. Image paths are relative
to the file's directory, or to ``image_root``. Every record is checked before any work: the fields
(as ``records.parse_annotation``), that its image exists and opens, and that no image appears
twice (within or across the two files). The ``row`` of a record is its 0-based position among
the file's non-blank lines: the row of a precomputed features file that belongs to it.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from pathlib import Path
from typing import Any

from pairuni_jax.data import records
from pairuni_jax.data.records import Annotation, DataError, ErrorKind, Issue, OnError


class Side(enum.StrEnum):
    """Which input a record comes from."""

    UNDERSTANDING = "understanding"
    GENERATION = "generation"


REQUIRED_FIELDS = {
    Side.UNDERSTANDING: ("image_path", "question", "answer"),
    Side.GENERATION: ("image_path", "prompt"),
}


class PairingError(ValueError):
    """Input that cannot be paired as a whole (an empty set, a features file of the wrong shape)."""


@dataclasses.dataclass(frozen=True)
class HalfRecord:
    """One valid input record. ``raw`` is the JSON object as read (written out again, with
    ``image_path`` rewritten relative to the output)."""

    side: Side
    file: Path
    line: int
    row: int
    annotation: Annotation
    raw: dict[str, Any]

    @property
    def image_path(self) -> Path:
        assert self.annotation.image_path is not None  # required on both sides
        return self.annotation.image_path

    @property
    def can_align(self) -> bool:
        """Whether the record carries its own completion (caption, or question and answer)."""
        if self.side is Side.UNDERSTANDING:
            return self.annotation.prompt is not None
        return self.annotation.question is not None

    @property
    def tag(self) -> str:
        return self.annotation.tag or records.NO_TAG


@dataclasses.dataclass
class HalfSet:
    """The valid records of one input file, and what was skipped (``on_error="skip"``)."""

    side: Side
    file: Path
    records: list[HalfRecord]
    lines: int  # non-blank lines in the file (the rows a features file must have)
    skipped: int = 0  # records left out under on_error="skip"
    errors_by_kind: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    issues: list[Issue] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def skip(self, issues: list[Issue]) -> None:
        """Counts one left-out record and everything wrong with it."""
        self.skipped += 1
        self.issues.extend(issues)
        self.errors_by_kind.update(issue.kind.value for issue in issues)


def read_halves(
    path: str | Path,
    side: Side,
    *,
    image_root: str | Path | None = None,
    on_error: OnError = "raise",
    seen_images: dict[Path, tuple[Path, int]] | None = None,
) -> HalfSet:
    """Reads and checks every record of one input file.

    seen_images: image path -> (file, line) of the record that used it first, shared between the
      two files so that an image in both sets is reported; updated in place.
    With ``on_error="raise"`` the first bad record raises ``DataError``; with ``"skip"`` it is
    left out and counted. Raises ``PairingError`` when no valid record remains, ``OSError`` when
    the file cannot be read.
    """
    index = records.index_jsonl(path)
    base = records.image_base(path, image_root)
    seen = {} if seen_images is None else seen_images
    out = HalfSet(side=side, file=index.file, records=[], lines=len(index))
    for row, (line, raw) in enumerate(records.iter_lines(index)):
        record, issues = _parse(raw, side, file=index.file, line=line, row=row, base=base)
        if record is not None:
            issues = _check_image(record, seen)
        if issues:
            if on_error == "raise":
                raise DataError(issues)
            out.skip(issues)
            continue
        seen[record.image_path] = (record.file, record.line)
        out.records.append(record)
    if not out.records:
        detail = f" ({len(out.issues)} bad, skipped)" if out.issues else ""
        raise PairingError(f"{index.file}: no valid {side} records{detail}")
    return out


def _parse(
    raw: bytes, side: Side, *, file: Path, line: int, row: int, base: Path
) -> tuple[HalfRecord | None, list[Issue]]:
    issues: list[Issue] = []

    def report(kind: ErrorKind, field: str, message: str) -> None:
        issues.append(Issue(kind, file, line, field, message))

    obj = records.parse_json_object(raw, report)
    if obj is None:
        return None, issues
    annotation = records.parse_annotation(
        obj, prefix="", required=REQUIRED_FIELDS[side], base=base, report=report
    )
    if annotation is None:
        return None, issues
    return HalfRecord(side, file, line, row, annotation, obj), issues


def _check_image(record: HalfRecord, seen: dict[Path, tuple[Path, int]]) -> list[Issue]:
    first = seen.get(record.image_path)
    if first is not None:
        message = f"{record.image_path} is also the image of {first[0]}:{first[1]}"
        return [Issue(ErrorKind.DUPLICATE_IMAGE, record.file, record.line, "image_path", message)]
    return records.check_image_file(
        record.image_path, file=record.file, line=record.line, field="image_path"
    )
