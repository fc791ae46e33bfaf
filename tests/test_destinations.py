"""Destination guards of ``convert`` and ``export``: ``--overwrite`` never deletes a source, a run
directory or anything pairuni did not write, and replaces what it wrote itself."""

from pathlib import Path

import pytest
import torch

from pairuni_jax import cli, destinations, run_dir
from pairuni_jax.models.janus import JanusConfig
from tests import reference
from tests.clip_reference import tiny_open_clip
from tests.files import snapshot


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny Janus saved with ``save_pretrained`` under ``x/hf``, beside a user's notes."""
    root = tmp_path_factory.mktemp("x")
    reference.tiny_hf_model(JanusConfig.tiny(), seed=0).save_pretrained(root / "hf")
    (root / "notes.txt").write_text("my experiment notes\n")
    return root / "hf"


@pytest.fixture(scope="module")
def orbax_dir(hf_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("orbax") / "model"
    assert cli.main(["convert", "hf-to-orbax", str(hf_dir), str(out)]) == 0
    return out


def _refused(argv, capsys, root: Path, message: str) -> None:
    before = snapshot(root)
    capsys.readouterr()
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert snapshot(root) == before


def test_hf_to_orbax_into_the_directory_holding_the_source_is_refused(hf_dir, capsys):
    root = hf_dir.parent
    argv = ["convert", "hf-to-orbax", str(hf_dir), str(root), "--overwrite"]
    _refused(argv, capsys, root, "contains the source")


def test_hf_to_orbax_onto_its_source_is_refused(hf_dir, capsys):
    argv = ["convert", "hf-to-orbax", str(hf_dir), str(hf_dir), "--overwrite"]
    _refused(argv, capsys, hf_dir.parent, "is the source")


def test_orbax_to_hf_onto_its_source_is_refused_though_pairuni_wrote_it(orbax_dir, capsys):
    # The model directory carries the marker of hf-to-orbax: only the source rule protects it.
    assert (orbax_dir / destinations.MARKER).is_file()
    argv = ["convert", "orbax-to-hf", str(orbax_dir), str(orbax_dir), "--overwrite"]
    _refused(argv, capsys, orbax_dir.parent, "is the source")


def test_hpsv2_into_the_directory_of_its_pt_file_is_refused(tmp_path, capsys):
    source = tmp_path / "s" / "hps.pt"
    source.parent.mkdir()
    model = tiny_open_clip(seed=3)
    torch.save({"state_dict": {k: v.half() for k, v in model.state_dict().items()}}, source)
    argv = ["convert", "hpsv2", str(source), str(source.parent), "--preset", "tiny", "--overwrite"]
    _refused(argv, capsys, tmp_path, "contains the source")


def test_overwrite_refuses_what_pairuni_did_not_write(hf_dir, tmp_path, capsys):
    user_dir = tmp_path / "results"
    user_dir.mkdir()
    (user_dir / "paper.tex").write_text("\\section{Results}\n")
    argv = ["convert", "hf-to-orbax", str(hf_dir), str(user_dir), "--overwrite"]
    _refused(argv, capsys, tmp_path, f"has no {destinations.MARKER}")


def test_overwrite_replaces_its_own_output_but_not_files_added_to_it(hf_dir, tmp_path, capsys):
    out = tmp_path / "orbax"
    assert cli.main(["convert", "hf-to-orbax", str(hf_dir), str(out)]) == 0
    _refused(["convert", "hf-to-orbax", str(hf_dir), str(out)], capsys, tmp_path, "already exists")
    first = sorted(p.name for p in out.iterdir())
    (out / "config.json").write_text("{}")  # so that a replaced directory shows
    assert cli.main(["convert", "hf-to-orbax", str(hf_dir), str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == first
    assert (out / "config.json").read_text() != "{}"
    assert not list(tmp_path.glob(".orbax.*")), "no temporary or moved-aside directory is left"

    (out / "my_eval.json").write_text("{}")
    argv = ["convert", "hf-to-orbax", str(hf_dir), str(out), "--overwrite"]
    _refused(argv, capsys, tmp_path, "would delete my_eval.json")


def _fake_run(root: Path) -> Path:
    """A run directory as ``pairuni train`` leaves it (its config and a checkpoint)."""
    run = root / "runs" / "R"
    (run / run_dir.CHECKPOINTS_DIR / "2").mkdir(parents=True)
    (run / run_dir.CHECKPOINTS_DIR / "2" / "_CHECKPOINT_METADATA").write_text("{}")
    (run / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    run_dir.record_config(run, {"run_dir": str(run), "steps": 2})
    return run


def test_export_onto_or_into_its_run_dir_is_refused(tmp_path, capsys):
    run = _fake_run(tmp_path)
    _refused(["export", str(run), str(run), "--overwrite"], capsys, tmp_path, "is the source")
    _refused(["export", str(run), str(run / "hf")], capsys, tmp_path, "lies inside the source")


def test_convert_into_a_run_dir_is_refused(hf_dir, tmp_path, capsys):
    run = _fake_run(tmp_path)
    argv = ["convert", "hf-to-orbax", str(hf_dir), str(run / "checkpoints" / "3")]
    _refused(argv, capsys, tmp_path, f"inside the pairuni train run directory {run}")
    argv = ["convert", "hf-to-orbax", str(hf_dir), str(run), "--overwrite"]
    _refused(argv, capsys, tmp_path, "is a pairuni train run directory")
