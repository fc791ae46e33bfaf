"""Pair records: every validation error kind (raise and skip modes), the aligned rule, answer
letters, and ``pairuni data validate``."""

import copy
import json

import numpy as np
import pytest
from PIL import Image

from pairuni_jax import cli
from pairuni_jax.data import records
from pairuni_jax.data.records import ErrorKind

QUESTION = "What colour is the ball?\nA. red\nB. blue\nC. green\n\nAnswer with the option's letter."
GOOD = {
    "similarity": 0.7,
    "generate_ann": {
        "image_path": "images/gen.png",
        "prompt": "a red ball on grass",
        "question": QUESTION,
        "answer": "A",
        "tag": "gen_tag",
    },
    "understand_ann": {
        "image_path": "images/und.png",
        "prompt": "a blue ball",
        "question": QUESTION,
        "answer": "B",
        "tag": "und_tag",
    },
}


def _set(path, value):
    def mutate(rec):
        *parents, leaf = path.split(".")
        target = rec
        for key in parents:
            target = target[key]
        if value is _DELETE:
            del target[leaf]
        else:
            target[leaf] = value
        return rec

    return mutate


_DELETE = object()

# (case id, mutation of GOOD or a raw line, expected kind, expected field)
CASES = [
    ("invalid_json", '{"similarity": 0.5, "generate_ann": ', ErrorKind.INVALID_JSON, "<line>"),
    ("not_an_object", "[1, 2]", ErrorKind.WRONG_TYPE, "<line>"),
    ("missing_similarity", _set("similarity", _DELETE), ErrorKind.MISSING_FIELD, "similarity"),
    ("missing_side", _set("generate_ann", _DELETE), ErrorKind.MISSING_FIELD, "generate_ann"),
    (
        "missing_answer",
        _set("understand_ann.answer", _DELETE),
        ErrorKind.MISSING_FIELD,
        "understand_ann.answer",
    ),
    ("similarity_string", _set("similarity", "0.5"), ErrorKind.WRONG_TYPE, "similarity"),
    ("similarity_bool", _set("similarity", True), ErrorKind.WRONG_TYPE, "similarity"),
    (
        "question_number",
        _set("understand_ann.question", 3),
        ErrorKind.WRONG_TYPE,
        "understand_ann.question",
    ),
    ("side_list", _set("understand_ann", []), ErrorKind.WRONG_TYPE, "understand_ann"),
    ("aligned_string", _set("aligned", "yes"), ErrorKind.WRONG_TYPE, "aligned"),
    (
        "answer_not_option",
        _set("understand_ann.answer", "D"),
        ErrorKind.ANSWER_NOT_AN_OPTION,
        "understand_ann.answer",
    ),
    (
        "answer_lowercase",
        _set("generate_ann.answer", "a"),
        ErrorKind.ANSWER_NOT_AN_OPTION,
        "generate_ann.answer",
    ),
    (
        "no_options",
        _set("understand_ann.question", "What colour is it?"),
        ErrorKind.INVALID_OPTIONS,
        "understand_ann.question",
    ),
    (
        "gap_in_options",
        _set("understand_ann.question", "Q?\nA. x\nC. y"),
        ErrorKind.INVALID_OPTIONS,
        "understand_ann.question",
    ),
    ("similarity_high", _set("similarity", 1.5), ErrorKind.SIMILARITY_OUT_OF_RANGE, "similarity"),
    (
        "similarity_negative",
        _set("similarity", -0.1),
        ErrorKind.SIMILARITY_OUT_OF_RANGE,
        "similarity",
    ),
    (
        "missing_image",
        _set("understand_ann.image_path", "images/nope.png"),
        ErrorKind.MISSING_IMAGE,
        "understand_ann.image_path",
    ),
    (
        "unreadable_image",
        _set("generate_ann.image_path", "images/corrupt.png"),
        ErrorKind.UNREADABLE_IMAGE,
        "generate_ann.image_path",
    ),
    (
        "empty_prompt",
        _set("generate_ann.prompt", "  "),
        ErrorKind.EMPTY_TEXT,
        "generate_ann.prompt",
    ),
    (
        "empty_question",
        _set("understand_ann.question", ""),
        ErrorKind.EMPTY_TEXT,
        "understand_ann.question",
    ),
    (
        "special_token",
        _set("generate_ann.prompt", "a <image_placeholder> ball"),
        ErrorKind.SPECIAL_TOKEN_IN_TEXT,
        "generate_ann.prompt",
    ),
]

BY_ID = {case[0]: case for case in CASES}


def _line(case) -> str:
    mutation = case[1]
    return mutation if isinstance(mutation, str) else json.dumps(mutation(copy.deepcopy(GOOD)))


@pytest.fixture
def data_dir(tmp_path):
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    for name in ("gen", "und"):
        pixels = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "images" / f"{name}.png")
    (tmp_path / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return tmp_path


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_each_error_kind_raises_with_file_line_and_field(data_dir, case):
    _, _, kind, field = case
    # Line 1 good, line 2 blank (not a record), line 3 bad: the error must say line 3.
    path = _write(data_dir / "pairs.jsonl", [json.dumps(GOOD), "", _line(case)])
    with pytest.raises(records.DataError) as info:
        records.scan_jsonl(path)
    issue = info.value.issues[0]
    assert (issue.kind, issue.field, issue.line, issue.file) == (kind, field, 3, path)
    assert f"{path}:3: {field}: " in str(info.value)
    assert kind.value in str(info.value)


def test_skip_mode_counts_every_kind(data_dir):
    lines = [json.dumps(GOOD)] + [_line(case) for case in CASES] + [json.dumps(GOOD)]
    path = _write(data_dir / "pairs.jsonl", lines)
    index, report = records.scan_jsonl(path, on_error="skip")
    assert index.lines.tolist() == [1, len(lines)]
    assert (report.records, report.valid, report.skipped) == (len(lines), 2, len(CASES))
    expected = {}
    for case in CASES:
        expected[case[2].value] = expected.get(case[2].value, 0) + 1
    assert dict(report.errors_by_kind) == expected
    assert not report.ok
    summary = report.summary(max_issues=3)
    assert f"records: {len(lines)} (valid 2, invalid {len(CASES)})" in summary
    assert f"... {len(CASES) - 3} more" in summary


def test_all_issues_of_one_record_are_reported(data_dir):
    bad = copy.deepcopy(GOOD)
    bad["similarity"] = 2.0
    bad["understand_ann"]["answer"] = "Z"
    del bad["generate_ann"]["prompt"]
    path = _write(data_dir / "pairs.jsonl", [json.dumps(bad)])
    _, report = records.scan_jsonl(path, on_error="skip")
    assert {(i.kind, i.field) for i in report.issues} == {
        (ErrorKind.SIMILARITY_OUT_OF_RANGE, "similarity"),
        (ErrorKind.ANSWER_NOT_AN_OPTION, "understand_ann.answer"),
        (ErrorKind.MISSING_FIELD, "generate_ann.prompt"),
    }
    assert report.skipped == 1


def _without(rec, *paths):
    rec = copy.deepcopy(rec)
    for path in paths:
        rec = _set(path, _DELETE)(rec)
    return rec


def test_pair_halves_without_completions_are_valid(data_dir):
    """A retrieved pair needs only what training reads: the generation prompt and the
    understanding image, question and answer. Absent (or null) optional fields are fine."""
    bare = _without(
        GOOD,
        "generate_ann.image_path",
        "generate_ann.question",
        "generate_ann.answer",
        "generate_ann.tag",
        "understand_ann.prompt",
        "understand_ann.tag",
    )
    nulls = copy.deepcopy(GOOD)
    nulls["generate_ann"].update(question=None, answer=None)
    nulls["understand_ann"]["prompt"] = None
    path = _write(data_dir / "pairs.jsonl", [json.dumps(bare), json.dumps(nulls)])
    index, report = records.scan_jsonl(path)
    assert report.ok and report.valid == 2 and len(index) == 2
    record = _record(bare, data_dir)
    assert record.generate.image_path is None and record.generate.question is None
    assert record.understand.prompt is None and record.understand.answer_index == 1
    assert record.aligned is False
    assert dict(report.generate_tags) == {records.NO_TAG: 1, "gen_tag": 1}


@pytest.mark.parametrize(
    "field", ["generate_ann.prompt", "understand_ann.image_path", "understand_ann.question"]
)
def test_fields_training_reads_are_required(data_dir, field):
    path = _write(data_dir / "pairs.jsonl", [json.dumps(_without(GOOD, field))])
    with pytest.raises(records.DataError) as info:
        records.scan_jsonl(path)
    assert (info.value.issues[0].kind, info.value.issues[0].field) == (
        ErrorKind.MISSING_FIELD,
        field,
    )


@pytest.mark.parametrize(
    "mutation, kind, field",
    [
        (
            _set("generate_ann.question", "no options here"),
            ErrorKind.INVALID_OPTIONS,
            "generate_ann.question",
        ),
        (_set("generate_ann.question", _DELETE), ErrorKind.MISSING_FIELD, "generate_ann.question"),
        (_set("generate_ann.answer", _DELETE), ErrorKind.MISSING_FIELD, "generate_ann.answer"),
        (_set("understand_ann.prompt", " "), ErrorKind.EMPTY_TEXT, "understand_ann.prompt"),
        (_set("understand_ann.tag", 7), ErrorKind.WRONG_TYPE, "understand_ann.tag"),
        (
            _set("generate_ann.image_path", "images/nope.png"),
            ErrorKind.MISSING_IMAGE,
            "generate_ann.image_path",
        ),
    ],
    ids=[
        "gen_question_options",
        "gen_answer_alone",
        "gen_question_alone",
        "und_caption_empty",
        "tag_type",
        "gen_image_missing",
    ],
)
def test_optional_fields_are_checked_when_present(data_dir, mutation, kind, field):
    path = _write(data_dir / "pairs.jsonl", [json.dumps(mutation(copy.deepcopy(GOOD)))])
    with pytest.raises(records.DataError) as info:
        records.scan_jsonl(path)
    assert (info.value.issues[0].kind, info.value.issues[0].field) == (kind, field)


def test_invalid_on_error_value(data_dir):
    path = _write(data_dir / "pairs.jsonl", [json.dumps(GOOD)])
    with pytest.raises(ValueError, match="on_error"):
        records.scan_jsonl(path, on_error="ignore")


def _record(rec, data_dir):
    record, issues = records.parse_record(
        json.dumps(rec), file=data_dir / "x.jsonl", line=1, base=data_dir
    )
    assert issues == []
    return record


@pytest.mark.parametrize(
    "change, aligned",
    [
        ({}, False),  # different images, similarity 0.7
        ({"similarity": 0.9995}, True),  # similarity >= 0.999
        ({"understand_ann.image_path": "images/./gen.png"}, True),  # same file after resolution
        ({"aligned": False, "similarity": 1.0}, False),  # the explicit field wins
        ({"aligned": True}, True),
    ],
)
def test_aligned_rule(data_dir, change, aligned):
    rec = copy.deepcopy(GOOD)
    for path, value in change.items():
        rec = _set(path, value)(rec)
    assert _record(rec, data_dir).aligned is aligned


def test_answer_letters_and_image_resolution(data_dir, tmp_path_factory):
    record = _record(GOOD, data_dir)
    assert record.understand.options == ("A", "B", "C")
    assert record.understand.answer_index == 1
    assert record.generate.answer_index == 0
    assert record.understand.image_path == data_dir / "images" / "und.png"
    assert records.option_letters("Q?\n  A. one\nB) two\nC. three\nnot D. four") == ("A", "C")
    other_root = tmp_path_factory.mktemp("root")
    assert records.image_base(data_dir / "p.jsonl", other_root) == other_root


def test_report_counts_tags_and_kinds(data_dir):
    aligned = copy.deepcopy(GOOD)
    aligned["understand_ann"]["image_path"] = "images/gen.png"
    path = _write(data_dir / "pairs.jsonl", [json.dumps(GOOD), json.dumps(aligned)])
    _, report = records.scan_jsonl(path)
    assert (report.valid, report.aligned, report.retrieved) == (2, 1, 1)
    assert dict(report.understand_tags) == {"und_tag": 2}
    assert dict(report.generate_tags) == {"gen_tag": 2}
    assert report.ok


def test_cli_validate_good_file(data_dir, capsys):
    path = _write(data_dir / "pairs.jsonl", [json.dumps(GOOD)] * 3)
    assert cli.main(["data", "validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "records: 3 (valid 3, invalid 0)" in out
    assert "aligned: 0  retrieved: 3" in out
    assert "understand tags: und_tag=3" in out
    assert "errors by kind: none" in out


def test_cli_validate_bad_file_and_image_root(data_dir, tmp_path_factory, capsys):
    lines = [json.dumps(GOOD), _line(BY_ID["invalid_json"]), _line(BY_ID["missing_image"])]
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    path = _write(elsewhere / "pairs.jsonl", lines)
    # Relative to the JSONL's directory the images do not exist; --image-root finds them.
    assert cli.main(["data", "validate", str(path)]) == 1
    assert "missing_image=" in capsys.readouterr().out
    assert cli.main(["data", "validate", str(path), "--image-root", str(data_dir)]) == 1
    out = capsys.readouterr().out
    assert "records: 3 (valid 1, invalid 2)" in out
    assert "errors by kind: invalid_json=1, missing_image=1" in out
    assert f"{path}:2: <line>: not valid JSON" in out
    assert f"{path}:3: understand_ann.image_path: no image file at" in out


def test_cli_validate_missing_file(tmp_path, capsys):
    assert cli.main(["data", "validate", str(tmp_path / "none.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().out
