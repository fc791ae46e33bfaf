"""Pair records: the JSONL format of ``spec/pair_grpo.md`` §4.3, its line index and its validation.

One line holds one pair::

    {"similarity": 0.88,
     "generate_ann":   {"image_path": ..., "prompt": ..., "question": ..., "answer": "A",
                        "tag": ...},
     "understand_ann": {"image_path": ..., "prompt": ..., "question": ..., "answer": "A",
                        "tag": ...}}

Required are the fields training reads (``REQUIRED_FIELDS``): ``generate_ann.prompt``
(generation rollout prompt and HPS text) and ``understand_ann.image_path`` + ``question`` +
``answer``. The other fields (the generation side's image, question and answer, the understanding
side's caption ``prompt``, both tags) are optional, as in a retrieved pair whose halves carry no
completion, and are checked when present (a JSON ``null`` counts as absent): every field is a
string; ``image_path``, ``prompt`` and ``question`` are non-empty, ``prompt`` and ``question``
free of Janus special tokens; a ``question`` and its ``answer`` come together. ``similarity`` is a
number in [0, 1]. A data set is either well-formed or reported. Blank lines are not records.
Image paths are resolved against ``image_root`` when given, else against the JSONL's directory;
absolute paths are kept.

**Answer letters.** An option is a line of the question that starts (after optional spaces) with a
capital letter, a full stop and a space: ``A. Stripes``. The option letters, in order of
appearance, must be ``A, B, C, ...`` without gaps or repeats; ``answer`` must be exactly one of
them. The understanding answer is then the index ``ord(answer) - ord("A")`` (0 for "A") and the
number of options is the number of option lines.

**Aligned or retrieved.** A record is *aligned* (pair weight 1) when its optional top-level
boolean field ``aligned`` says so; without that field it is aligned when both sides name the same
image file (after resolution) or when ``similarity >= ALIGNED_SIMILARITY`` (0.999). Every other
record is *retrieved* (pair weight sqrt(similarity)).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import enum
import itertools
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pairuni_jax.data import images
from pairuni_jax.data.prompts import SPECIAL_TOKENS

ALIGNED_SIMILARITY = 0.999
SIDES = ("generate_ann", "understand_ann")
TEXT_FIELDS = ("image_path", "prompt", "question", "answer", "tag")
REQUIRED_FIELDS = {
    "generate_ann": ("prompt",),
    "understand_ann": ("image_path", "question", "answer"),
}
NO_TAG = "<none>"  # how reports count records without a tag
OnError = Literal["raise", "skip"]
IMAGE_THREADS = min(32, os.cpu_count() or 1)
SCAN_CHUNK = 256  # records parsed, then image-checked in parallel, at a time

_OPTION_LINE = re.compile(r"^[ \t]*([A-Z])\.[ \t]", re.MULTILINE)


class ErrorKind(enum.StrEnum):
    """What is wrong with a record; the keys of the error counts."""

    INVALID_JSON = "invalid_json"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    EMPTY_TEXT = "empty_text"
    SPECIAL_TOKEN_IN_TEXT = "special_token_in_text"
    INVALID_OPTIONS = "invalid_options"
    ANSWER_NOT_AN_OPTION = "answer_not_an_option"
    SIMILARITY_OUT_OF_RANGE = "similarity_out_of_range"
    MISSING_IMAGE = "missing_image"
    UNREADABLE_IMAGE = "unreadable_image"
    PROMPT_TOO_LONG = "prompt_too_long"
    DUPLICATE_IMAGE = "duplicate_image"
    INVALID_FEATURE = "invalid_feature"
    UNENCODABLE_TEXT = "unencodable_text"
    UNTOKENIZABLE_TEXT = "untokenizable_text"
    NO_RECORDS = "no_records"


@dataclasses.dataclass(frozen=True)
class Issue:
    """One problem in one record, located by file, 1-based line and dotted field name."""

    kind: ErrorKind
    file: Path
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message} [{self.kind}]"


class DataError(ValueError):
    """A bad record met with ``on_error="raise"``; ``issues`` lists everything wrong with it."""

    def __init__(self, issues: list[Issue]):
        self.issues = issues
        super().__init__("bad pair record:\n" + "\n".join(f"  {issue}" for issue in issues))


@dataclasses.dataclass(frozen=True)
class Annotation:
    """One side of a pair (or one record of a pair half). ``image_path`` is resolved; ``options``
    are the question's letters (empty without a question). A field the record does not carry is
    None; which fields must be present depends on the side (``REQUIRED_FIELDS``)."""

    image_path: Path | None
    prompt: str | None
    question: str | None
    answer: str | None
    tag: str | None
    options: tuple[str, ...]

    @property
    def answer_index(self) -> int:
        """0 for "A", 1 for "B", ..."""
        return self.options.index(self.answer)


@dataclasses.dataclass(frozen=True)
class PairRecord:
    """A validated pair. ``line`` is the 1-based line of the record in ``file``."""

    file: Path
    line: int
    similarity: float
    aligned: bool
    generate: Annotation
    understand: Annotation


def option_letters(question: str) -> tuple[str, ...]:
    """The option letters listed in ``question``, in order (see the module docstring)."""
    return tuple(_OPTION_LINE.findall(question))


@dataclasses.dataclass(frozen=True)
class LineIndex:
    """Byte offsets, byte lengths and 1-based line numbers of the records of one JSONL file."""

    file: Path
    offsets: np.ndarray  # int64[N]
    lengths: np.ndarray  # int64[N]
    lines: np.ndarray  # int64[N]

    def __len__(self) -> int:
        return len(self.offsets)

    def select(self, keep: np.ndarray) -> LineIndex:
        """The index restricted to the entries where the boolean ``keep[N]`` is True."""
        return LineIndex(self.file, self.offsets[keep], self.lengths[keep], self.lines[keep])


def index_jsonl(path: str | Path) -> LineIndex:
    """Reads ``path`` once and records where each non-blank line starts and ends."""
    path = Path(path)
    offsets, lengths, lines = [], [], []
    offset = 0
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if raw.strip():
                offsets.append(offset)
                lengths.append(len(raw))
                lines.append(number)
            offset += len(raw)
    offsets, lengths, lines = (np.asarray(v, dtype=np.int64) for v in (offsets, lengths, lines))
    return LineIndex(path, offsets, lengths, lines)


def iter_lines(index: LineIndex) -> Iterator[tuple[int, bytes]]:
    """Yields (line number, raw bytes) for every indexed record, reading the file sequentially."""
    with index.file.open("rb") as f:
        for offset, length, line in zip(index.offsets, index.lengths, index.lines, strict=True):
            f.seek(int(offset))
            yield int(line), f.read(int(length))


def image_base(path: str | Path, image_root: str | Path | None) -> Path:
    """The directory relative image paths of the JSONL ``path`` are resolved against."""
    return Path(image_root) if image_root is not None else Path(path).absolute().parent


def parse_record(
    raw: bytes | str, *, file: Path, line: int, base: Path
) -> tuple[PairRecord | None, list[Issue]]:
    """Parses and checks one JSONL line (without opening images).

    Returns the record and an empty list, or None and every problem found in the line.
    """
    issues: list[Issue] = []

    def report(kind: ErrorKind, field: str, message: str) -> None:
        issues.append(Issue(kind, file, line, field, message))

    obj = parse_json_object(raw, report)
    if obj is None:
        return None, issues
    for field, message in _unencodable_strings(obj):
        report(ErrorKind.UNENCODABLE_TEXT, field, message)

    similarity = _parse_similarity(obj, report)
    aligned_field = obj.get("aligned")
    if aligned_field is not None and not isinstance(aligned_field, bool):
        report(
            ErrorKind.WRONG_TYPE, "aligned", f"expected a boolean, got {_json_type(aligned_field)}"
        )
    sides = {side: _parse_side(obj, side, base, report) for side in SIDES}
    if issues:
        return None, issues
    generate, understand = sides["generate_ann"], sides["understand_ann"]
    if aligned_field is None:
        aligned = generate.image_path == understand.image_path or similarity >= ALIGNED_SIMILARITY
    else:
        aligned = aligned_field
    record = PairRecord(file, line, similarity, aligned, generate, understand)
    return record, issues


def parse_json_object(
    raw: bytes | str, report: Callable[[ErrorKind, str, str], None]
) -> dict[str, Any] | None:
    """One JSONL line as a JSON object, or None after reporting why it is not one."""
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        report(ErrorKind.INVALID_JSON, "<line>", f"not valid JSON: {e}")
        return None
    if not isinstance(obj, dict):
        report(ErrorKind.WRONG_TYPE, "<line>", f"expected a JSON object, got {_json_type(obj)}")
        return None
    return obj


def _unencodable_strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(field, message) for every string in a parsed JSON value that is not valid Unicode text:
    JSON's ``\\ud800`` escapes can spell lone surrogates, which no tokenizer can encode."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            code = ord(value[e.start])
            yield (
                path or "<line>",
                (
                    f"holds the lone surrogate U+{code:04X} at character {e.start} (a broken "
                    "\\u escape), which is not text a tokenizer can encode"
                ),
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _unencodable_strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _unencodable_strings(item, f"{path}[{i}]")


def check_images(record: PairRecord) -> list[Issue]:
    """Decodes both sides' images in full: missing files and files PIL cannot decode (truncated,
    corrupt data, unsupported pixel types) become issues."""
    issues = []
    checked: set[Path] = set()
    for side, annotation in zip(SIDES, (record.generate, record.understand), strict=True):
        path = annotation.image_path
        if path is None or path in checked:
            continue
        checked.add(path)
        issues.extend(
            check_image_file(path, file=record.file, line=record.line, field=f"{side}.image_path")
        )
    return issues


def check_image_file(path: Path, *, file: Path, line: int, field: str) -> list[Issue]:
    """Decodes one image in full: a missing file or one PIL cannot decode (truncated, corrupt
    data, unsupported pixel types) is an issue at (file, line, field)."""
    if not path.is_file():
        return [Issue(ErrorKind.MISSING_IMAGE, file, line, field, f"no image file at {path}")]
    try:
        images.load_image(path)
    except Exception as e:  # PIL raises many types for corrupt files; all mean "unreadable"
        message = f"cannot read {path}: {type(e).__name__}: {e}"
        return [Issue(ErrorKind.UNREADABLE_IMAGE, file, line, field, message)]
    return []


@dataclasses.dataclass
class ValidationReport:
    """What a scan of one JSONL file found. Counts cover the valid records only, except
    ``records`` (all non-blank lines), ``skipped`` (invalid records) and ``errors_by_kind``."""

    file: Path
    records: int = 0
    valid: int = 0
    aligned: int = 0
    retrieved: int = 0
    skipped: int = 0
    understand_tags: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    generate_tags: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    errors_by_kind: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    issues: list[Issue] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.issues

    def add_valid(self, record: PairRecord) -> None:
        self.valid += 1
        if record.aligned:
            self.aligned += 1
        else:
            self.retrieved += 1
        self.understand_tags[record.understand.tag or NO_TAG] += 1
        self.generate_tags[record.generate.tag or NO_TAG] += 1

    def add_invalid(self, issues: list[Issue]) -> None:
        self.skipped += 1
        self.issues.extend(issues)
        self.errors_by_kind.update(issue.kind.value for issue in issues)

    def summary(self, max_issues: int = 20) -> str:
        """A human-readable multi-line summary, listing the first ``max_issues`` issues."""
        out = [
            f"file: {self.file}",
            f"records: {self.records} (valid {self.valid}, invalid {self.skipped})",
            f"aligned: {self.aligned}  retrieved: {self.retrieved}",
            f"understand tags: {_format_counts(self.understand_tags)}",
            f"generate tags: {_format_counts(self.generate_tags)}",
            f"errors by kind: {_format_counts(self.errors_by_kind)}",
        ]
        if self.issues:
            out.append(f"errors ({len(self.issues)}):")
            out.extend(f"  {issue}" for issue in self.issues[:max_issues])
            if len(self.issues) > max_issues:
                out.append(f"  ... {len(self.issues) - max_issues} more")
        return "\n".join(out)


RecordCheck = Callable[[PairRecord], list[Issue]]


def scan_jsonl(
    path: str | Path,
    *,
    image_root: str | Path | None = None,
    on_error: OnError = "raise",
    extra_check: RecordCheck | None = None,
) -> tuple[LineIndex, ValidationReport]:
    """Indexes and validates every record of ``path``, including its images (decoded in full).
    A file without records is an error (``NO_RECORDS``).

    ``extra_check`` adds caller-specific checks (the pipeline's tokenized-length limits).
    With ``on_error="raise"`` the first bad record raises ``DataError``; with ``"skip"`` bad records
    are left out of the returned index and counted in the report.

    Returns the index of the valid records and the report.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    index = index_jsonl(path)
    base = image_base(path, image_root)
    report = ValidationReport(file=index.file, records=len(index))
    if len(index) == 0:
        issue = Issue(ErrorKind.NO_RECORDS, index.file, 0, "<file>", "empty or only blank lines")
        if on_error == "raise":
            raise DataError([issue])
        report.issues.append(issue)
        report.errors_by_kind[issue.kind.value] += 1
    keep = np.zeros(len(index), dtype=bool)
    lines = iter_lines(index)
    # Decoding images dominates the scan; PIL's decoders release the GIL, so threads help.
    with concurrent.futures.ThreadPoolExecutor(IMAGE_THREADS) as pool:
        for start in range(0, len(index), SCAN_CHUNK):
            parsed = [
                parse_record(raw, file=index.file, line=line, base=base)
                for line, raw in itertools.islice(lines, SCAN_CHUNK)
            ]
            found = pool.map(lambda p: check_images(p[0]) if p[0] is not None else [], parsed)
            for i, ((record, issues), image_issues) in enumerate(zip(parsed, found), start):
                if record is not None:
                    issues = image_issues + (extra_check(record) if extra_check else [])
                if issues:
                    if on_error == "raise":
                        raise DataError(issues)
                    report.add_invalid(issues)
                else:
                    keep[i] = True
                    report.add_valid(record)
    return index.select(keep), report


def _parse_similarity(obj: dict[str, Any], report: Callable[..., None]) -> float:
    if "similarity" not in obj:
        report(ErrorKind.MISSING_FIELD, "similarity", "required field is missing")
        return math.nan
    value = obj["similarity"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        report(ErrorKind.WRONG_TYPE, "similarity", f"expected a number, got {_json_type(value)}")
        return math.nan
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        report(ErrorKind.SIMILARITY_OUT_OF_RANGE, "similarity", f"{value!r} is outside [0, 1]")
    return float(value)


def _parse_side(
    obj: dict[str, Any], side: str, base: Path, report: Callable[..., None]
) -> Annotation | None:
    if side not in obj:
        report(ErrorKind.MISSING_FIELD, side, "required field is missing")
        return None
    ann = obj[side]
    if not isinstance(ann, dict):
        report(ErrorKind.WRONG_TYPE, side, f"expected a JSON object, got {_json_type(ann)}")
        return None
    return parse_annotation(
        ann, prefix=f"{side}.", required=REQUIRED_FIELDS[side], base=base, report=report
    )


def parse_annotation(
    ann: dict[str, Any],
    *,
    prefix: str,
    required: tuple[str, ...],
    base: Path,
    report: Callable[[ErrorKind, str, str], None],
) -> Annotation | None:
    """Checks one annotation object (a pair side, or a record of a pair half).

    The fields in ``required`` must be present; the other ``TEXT_FIELDS`` are checked when present
    (see the module docstring). Problems go to ``report(kind, prefix + field, message)``.
    Returns the annotation, or None when anything was reported.
    """
    reported = 0

    def counted(kind: ErrorKind, field: str, message: str) -> None:
        nonlocal reported
        reported += 1
        report(kind, prefix + field, message)

    values: dict[str, str] = {}
    for name in TEXT_FIELDS:
        value = ann.get(name)
        if value is None and name not in required:
            continue
        if name not in ann:
            counted(ErrorKind.MISSING_FIELD, name, "required field is missing")
        elif not isinstance(value, str):
            counted(ErrorKind.WRONG_TYPE, name, f"expected a string, got {_json_type(value)}")
        else:
            values[name] = value
    for present, partner in (("question", "answer"), ("answer", "question")):
        if present in values and ann.get(partner) is None and partner not in required:
            counted(ErrorKind.MISSING_FIELD, partner, f"required when {present} is given")
    _check_texts(values, counted)
    options = option_letters(values.get("question", ""))
    if values.get("question", "").strip():
        _check_options(options, values.get("answer"), counted)
    if reported:
        return None
    image_path = values.get("image_path")
    return Annotation(
        image_path=None if image_path is None else Path(os.path.normpath(base / image_path)),
        prompt=values.get("prompt"),
        question=values.get("question"),
        answer=values.get("answer"),
        tag=values.get("tag"),
        options=options,
    )


def _check_texts(values: dict[str, str], report: Callable[..., None]) -> None:
    for name in ("image_path", "prompt", "question"):
        if name in values and not values[name].strip():
            report(ErrorKind.EMPTY_TEXT, name, "must not be empty")
    for name in ("prompt", "question"):
        found = [token for token in SPECIAL_TOKENS if token in values.get(name, "")]
        if found:
            message = f"contains the Janus special token(s) {found}"
            report(ErrorKind.SPECIAL_TOKEN_IN_TEXT, name, message)


def _check_options(
    options: tuple[str, ...], answer: str | None, report: Callable[..., None]
) -> None:
    expected = tuple(chr(ord("A") + i) for i in range(len(options)))
    if len(options) < 2 or options != expected:
        message = (
            "expected option lines 'A. ...', 'B. ...', ... (at least two, consecutive letters "
            f"from A), found letters {list(options)}"
        )
        report(ErrorKind.INVALID_OPTIONS, "question", message)
    elif answer is not None and answer not in options:
        message = f"{answer!r} is not one of the listed options {list(options)}"
        report(ErrorKind.ANSWER_NOT_AN_OPTION, "answer", message)


def _json_type(value: Any) -> str:
    names = {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        type(None): "null",
        int: "number",
        float: "number",
    }
    return names.get(type(value), type(value).__name__)


def _format_counts(counts: collections.Counter) -> str:
    if not counts:
        return "none"
    return ", ".join(f"{key}={n}" for key, n in sorted(counts.items()))
