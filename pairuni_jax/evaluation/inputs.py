"""What ``pairuni eval`` reads: multiple-choice questions and generation prompts, checked.

**Questions** (the file's suffix picks the format):

- ``.jsonl``: one question a line, the understanding half of a pair record (``image_path``,
  ``question``, ``answer``, optional ``tag`` and ``id``), or a whole pair record, whose
  ``understand_ann`` is taken. The question lists its options as lines ``A. ...`` and ends with
  the letter instruction, as in the pair format (``spec/pair_grpo.md`` §4.3). Relative image paths
  resolve against ``image_root``, else the file's directory.
- ``.tsv``: the VLMEvalKit layout of MMStar / MMBench / MMMU files: a header row, then ``index``,
  ``question``, option columns ``A``, ``B``, ... (empty cells: fewer options), ``answer`` (the
  letter), optional ``category`` (the tag), ``hint`` and ``l2-category``, and the image as base64
  in ``image`` (a value of at most 64 characters names the ``index`` of the row holding the image,
  as VLMEvalKit stores repeated images) or as a path in ``image_path``. The question is built as
  a pair-format question::

      Hint: {hint}          (only when the row has a hint)
      {question}
      A. {A}
      B. {B}
      ...

      Answer with the option's letter from the given choices directly.

**Prompts**: ``.jsonl`` with ``prompt`` and optional ``tag`` (GenEval's metadata file reads as it
is), or any other file as plain text, one prompt a line (blank lines skipped).

A bad line or row is reported with file, line, field (TSV: column) and what was expected, as a
``records.Issue``; ``on_error="skip"`` leaves it out and returns the issues. Every image is
decoded once while reading, so an unreadable one is named before any model runs.
"""

from __future__ import annotations

import base64
import binascii
import csv
import dataclasses
import io
import json
import os
import string
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from pairuni_jax.data.prompts import SPECIAL_TOKENS
from pairuni_jax.data.records import ErrorKind, Issue, OnError, option_letters

LETTER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
DEFAULT_TAG = "untagged"
TSV_REQUIRED = ("index", "question", "answer", "A", "B")
TSV_IMAGE_COLUMNS = ("image", "image_path")
IMAGE_REFERENCE_MAX = 64  # VLMEvalKit: an image cell this short names another row's index


class InputError(ValueError):
    """Bad evaluation input met with ``on_error="raise"``; ``issues`` lists what is wrong."""

    def __init__(self, issues: list[Issue]):
        self.issues = issues
        more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
        super().__init__(f"{issues[0]}{more}")


@dataclasses.dataclass(frozen=True)
class Question:
    """One multiple-choice question, ready for the understanding prompt.

    id: the TSV ``index`` or the JSONL ``id`` (default: the line number); line: 1-based line of
    the record in ``file``; question: the full text (options and instruction included);
    options: its option letters in order; image: a file path or the encoded image bytes.
    """

    id: str
    file: Path
    line: int
    question: str
    answer: str
    options: tuple[str, ...]
    tag: str
    image: Path | bytes

    def open_image(self) -> Any:
        """A path or binary file object PIL can open."""
        return io.BytesIO(self.image) if isinstance(self.image, bytes) else self.image


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One generation prompt; id: its 0-based position in the file."""

    id: int
    file: Path
    line: int
    prompt: str
    tag: str


Report = Callable[[ErrorKind, str, str], None]


def read_questions(
    path: str | Path,
    *,
    image_root: str | Path | None = None,
    on_error: OnError = "raise",
    limit: int | None = None,
) -> tuple[list[Question], list[Issue]]:
    """The valid questions of a ``.jsonl`` or ``.tsv`` file (the first ``limit``; None: all) and
    the issues of the skipped ones."""
    path = Path(path)
    readers = {".jsonl": _jsonl_questions, ".tsv": _tsv_questions}
    if path.suffix not in readers:
        raise ValueError(f"{path}: questions must be a .jsonl or .tsv file")
    base = Path(image_root) if image_root is not None else path.absolute().parent
    return _collect(path, readers[path.suffix](path, base), on_error, limit, "questions")


def read_prompts(
    path: str | Path, *, on_error: OnError = "raise", limit: int | None = None
) -> tuple[list[Prompt], list[Issue]]:
    """The valid prompts of a ``.jsonl`` file (``prompt``, ``tag``) or a text file (the first
    ``limit``; None: all) and the issues of the skipped ones."""
    path = Path(path)
    lines = _jsonl_prompts(path) if path.suffix == ".jsonl" else _text_prompts(path)
    prompts, issues = _collect(path, lines, on_error, limit, "prompts")
    return [dataclasses.replace(p, id=i) for i, p in enumerate(prompts)], issues


def skipped_entries(issues: list[Issue]) -> int:
    """How many entries (lines, rows) the ``issues`` of a skip-mode read left out."""
    return len({(issue.file, issue.line) for issue in issues})


def _collect(
    path: Path, items: Iterator, on_error: OnError, limit: int | None, what: str
) -> tuple[list, list[Issue]]:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    kept, skipped = [], []
    for item, issues in items:
        if issues and on_error == "raise":
            raise InputError(issues)
        skipped.extend(issues)
        if not issues:
            kept.append(item)
            if len(kept) == limit:
                break
    if not kept:
        found = f": all {len(skipped)} issue(s), first: {skipped[0]}" if skipped else ""
        raise ValueError(f"{path}: no {what} (the file is empty or has no valid entry){found}")
    return kept, skipped


def _reporter(file: Path, line: int, issues: list[Issue], prefix: str = "") -> Report:
    def report(kind: ErrorKind, field: str, message: str) -> None:
        issues.append(Issue(kind, file, line, prefix + field, message))

    return report


# -- JSONL questions -----------------------------------------------------------------------------


def _json_lines(path: Path) -> Iterator[tuple[int, Any, list[Issue]]]:
    """(line, parsed object or None, issues) for every non-blank line."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            issues: list[Issue] = []
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                _reporter(path, number, issues)(ErrorKind.INVALID_JSON, "<line>", f"not JSON: {e}")
                obj = None
            if obj is not None and not isinstance(obj, dict):
                message = f"expected a JSON object, got {type(obj).__name__}"
                _reporter(path, number, issues)(ErrorKind.WRONG_TYPE, "<line>", message)
                obj = None
            yield number, obj, issues


def _jsonl_questions(path: Path, base: Path) -> Iterator[tuple[Question | None, list[Issue]]]:
    for line, obj, issues in _json_lines(path):
        if obj is None:
            yield None, issues
            continue
        prefix = ""
        if isinstance(obj.get("understand_ann"), dict):
            obj, prefix = obj["understand_ann"], "understand_ann."
        report = _reporter(path, line, issues, prefix)
        fields = {name: _text_field(obj, name, report) for name in ("image_path", "question")}
        answer = _text_field(obj, "answer", report, allow_empty=True)
        tag = _text_field(obj, "tag", report, required=False, allow_empty=True)
        ident = obj.get("id", line)
        if issues:
            yield None, issues
            continue
        options = _check_question(fields["question"], answer, report)
        image = Path(os.path.normpath(base / fields["image_path"]))
        if _check_image(image, "image_path", report) and options is not None:
            text, tag = fields["question"], tag or DEFAULT_TAG
            yield Question(str(ident), path, line, text, answer.strip(), options, tag, image), []
        else:
            yield None, issues


def _text_field(
    obj: dict, name: str, report: Report, *, required: bool = True, allow_empty: bool = False
) -> str | None:
    if name not in obj:
        if required:
            report(ErrorKind.MISSING_FIELD, name, "required field is missing")
        return None
    value = obj[name]
    if not isinstance(value, str):
        report(ErrorKind.WRONG_TYPE, name, f"expected a string, got {type(value).__name__}")
        return None
    if not allow_empty and not value.strip():
        report(ErrorKind.EMPTY_TEXT, name, "must not be empty")
        return None
    return value


# -- VLMEvalKit TSV questions --------------------------------------------------------------------


def _tsv_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header and (line, row) of every data row; base64 images make fields long."""
    csv.field_size_limit(max(csv.field_size_limit(), min(sys.maxsize, 2**31 - 1)))
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if not header:
            raise ValueError(f"{path}: no questions (the file is empty)")
        rows = []
        for values in reader:
            if not any(v.strip() for v in values):
                continue
            rows.append((reader.line_num, dict(zip(header, values))))
    return header, rows


def _tsv_questions(path: Path, base: Path) -> Iterator[tuple[Question | None, list[Issue]]]:
    header, rows = _tsv_rows(path)
    missing = [c for c in TSV_REQUIRED if c not in header]
    if not any(c in header for c in TSV_IMAGE_COLUMNS):
        missing.append(" or ".join(TSV_IMAGE_COLUMNS))
    if missing:
        message = f"the header has no column {', '.join(missing)} (it has {header})"
        raise InputError([Issue(ErrorKind.MISSING_FIELD, path, 1, missing[0], message)])
    letters = [c for c in string.ascii_uppercase if c in header]
    images = {row.get("index", ""): row.get("image", "") for _, row in rows}
    for line, row in rows:
        issues: list[Issue] = []
        report = _reporter(path, line, issues)
        if len(row) < len(header):
            message = f"the row has {len(row)} cells, the header {len(header)}"
            report(ErrorKind.MISSING_FIELD, header[len(row)], message)
            yield None, issues
            continue
        if not row["question"].strip():
            report(ErrorKind.EMPTY_TEXT, "question", "must not be empty")
        options = {c: row[c].strip() for c in letters if row[c].strip()}
        question = build_question(row["question"], options, row.get("hint"))
        found = _check_question(question, row["answer"], report, tuple(options))
        image = _tsv_image(row, images, base, report)
        if not issues:
            tag = row.get("category", "").strip() or DEFAULT_TAG
            ident = row["index"].strip()
            yield (
                Question(ident, path, line, question, row["answer"].strip(), found, tag, image),
                [],
            )
        else:
            yield None, issues


def build_question(question: str, options: dict[str, str], hint: str | None = None) -> str:
    """A pair-format question: the hint, the question, one ``A. ...`` line per option (letter ->
    text), the letter instruction."""
    head = f"Hint: {hint.strip()}\n" if hint and hint.strip() else ""
    lines = [f"{letter}. {text}" for letter, text in options.items()]
    return f"{head}{question.strip()}\n" + "\n".join(lines) + f"\n\n{LETTER_INSTRUCTION}"


def _tsv_image(row: dict[str, str], images: dict[str, str], base: Path, report: Report):
    """The row's image bytes (base64 ``image``, maybe a reference) or path (``image_path``)."""
    cell = row.get("image", "").strip()
    if cell and len(cell) <= IMAGE_REFERENCE_MAX:
        if len(images.get(cell, "")) <= IMAGE_REFERENCE_MAX:
            message = f"{cell!r} is neither base64 image data nor the index of a row with an image"
            report(ErrorKind.MISSING_IMAGE, "image", message)
            return None
        cell = images[cell].strip()
    if cell:
        if cell.startswith("["):
            message = "a list of images: Janus answers about one image per question"
            report(ErrorKind.WRONG_TYPE, "image", message)
            return None
        try:
            data = base64.b64decode(cell, validate=True)
        except (binascii.Error, ValueError) as e:
            report(ErrorKind.UNREADABLE_IMAGE, "image", f"not base64 image data ({e})")
            return None
        return data if _check_image(data, "image", report) else None
    path_cell = row.get("image_path", "").strip()
    if not path_cell:
        report(ErrorKind.MISSING_IMAGE, "image", "the row has neither image nor image_path")
        return None
    path = Path(os.path.normpath(base / path_cell))
    return path if _check_image(path, "image_path", report) else None


# -- shared checks -------------------------------------------------------------------------------


def _check_question(
    question: str,
    answer: str | None,
    report: Report,
    listed: tuple[str, ...] | None = None,
) -> tuple[str, ...] | None:
    """The question's option letters when they run ``A, B, ...`` (at least two), ``answer`` is
    one of them and no Janus special token appears; else reports the problems and returns None.
    ``listed``: the letters of a TSV row's non-empty option cells."""
    issues = []

    def note(kind: ErrorKind, field: str, message: str) -> None:
        issues.append(kind)
        report(kind, field, message)

    if found := [t for t in SPECIAL_TOKENS if t in question]:
        note(ErrorKind.SPECIAL_TOKEN_IN_TEXT, "question", f"contains Janus tokens {found}")
    options = listed if listed is not None else option_letters(question)
    if len(options) < 2 or options != tuple(string.ascii_uppercase[: len(options)]):
        where = "option cells" if listed is not None else "option lines 'A. ...', 'B. ...'"
        message = f"expected {where} A, B, ... (at least two, consecutive), found {list(options)}"
        note(ErrorKind.INVALID_OPTIONS, "question", message)
    elif listed is not None and option_letters(question) != listed:
        message = f"the question text has option lines {list(option_letters(question))} of its own"
        note(ErrorKind.INVALID_OPTIONS, "question", message)
    elif answer is None or answer.strip() not in options:
        message = f"{answer!r} is not one of the question's option letters {list(options)}"
        note(ErrorKind.ANSWER_NOT_AN_OPTION, "answer", message)
    return None if issues else options


def _check_image(image: Path | bytes, field: str, report: Report) -> bool:
    """Decodes the image fully (a truncated file fails here, not during the evaluation)."""
    if isinstance(image, Path) and not image.is_file():
        report(ErrorKind.MISSING_IMAGE, field, f"no image file at {image}")
        return False
    try:
        with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as opened:
            opened.load()
    except Exception as e:  # PIL raises many types for corrupt data; all mean "unreadable"
        where = image if isinstance(image, Path) else f"{len(image)} bytes"
        report(ErrorKind.UNREADABLE_IMAGE, field, f"cannot read {where}: {type(e).__name__}: {e}")
        return False
    return True


# -- prompts -------------------------------------------------------------------------------------


def _jsonl_prompts(path: Path) -> Iterator[tuple[Prompt | None, list[Issue]]]:
    for line, obj, issues in _json_lines(path):
        if obj is not None:
            report = _reporter(path, line, issues)
            prompt = _text_field(obj, "prompt", report)
            tag = _text_field(obj, "tag", report, required=False, allow_empty=True)
            if prompt is not None:
                _check_prompt(prompt, report)
        if issues:
            yield None, issues
        else:
            yield Prompt(0, path, line, prompt, tag or DEFAULT_TAG), issues


def _text_prompts(path: Path) -> Iterator[tuple[Prompt | None, list[Issue]]]:
    with path.open(encoding="utf-8") as f:
        for line, text in enumerate(f, 1):
            if not text.strip():
                continue
            issues: list[Issue] = []
            _check_prompt(text.strip(), _reporter(path, line, issues))
            yield (None if issues else Prompt(0, path, line, text.strip(), DEFAULT_TAG)), issues


def _check_prompt(prompt: str, report: Report) -> None:
    if found := [t for t in SPECIAL_TOKENS if t in prompt]:
        report(ErrorKind.SPECIAL_TOKEN_IN_TEXT, "prompt", f"contains Janus tokens {found}")
