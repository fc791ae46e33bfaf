"""``pairuni verify`` end to end on checkpoints built here as users' tools write them: a tiny
transformers Janus (``save_pretrained``, with a tokenizer saved next to it), its DeepSeek-layout
twin, and a tiny open_clip state dict in the HPS file layout."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import torch

from pairuni_jax import cli
from pairuni_jax.checkpoint import convert, hf_reader
from pairuni_jax.data import prompts
from pairuni_jax.models.janus import JanusConfig
from pairuni_jax.verify import GoldenMode, Status, checks, golden, janus_reference
from tests import reference
from tests.clip_reference import tiny_open_clip

CONFIG = JanusConfig.tiny()  # image_token_id 3: the tiny tokenizer's <image_placeholder>
TOKENIZER = Path(__file__).resolve().parents[1] / "pairuni_jax" / "assets" / "tiny_tokenizer"
JANUS_CHECKS = {
    "text_logits",
    "text_answer",
    "image_tokens_first_50",
    "image_tokens_golden",
    "image_tokens_all",
    "vq_decode",
    "siglip_features",
    "aligner_output",
}


@pytest.fixture(scope="module")
def janus_dir(tmp_path_factory):
    """A perturbed random transformers Janus and the tiny tokenizer, both ``save_pretrained``.

    transformers 5.24 defaults ``tie_word_embeddings`` to True, and ``save_pretrained`` then
    drops ``lm_head.weight``, which the converter on main refuses as a missing key (issue 16
    converts tied checkpoints as transformers loads them); ``reference.hf_config`` sets it False
    explicitly until then.
    """
    directory = tmp_path_factory.mktemp("janus") / "tiny-transformers"
    reference.tiny_hf_model(CONFIG, seed=0).save_pretrained(directory)
    prompts.load_tokenizer(TOKENIZER).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def deepseek_dir(janus_dir, tmp_path_factory):
    """The same weights in the DeepSeek layout (the exporter's output equals the spec's key
    table: ``test_convert_janus``)."""
    work = tmp_path_factory.mktemp("deepseek")
    orbax = convert.hf_to_orbax(janus_dir, work / "orbax", progress=False)
    out = convert.orbax_to_hf(orbax, work / "tiny-deepseek", format="deepseek", progress=False)
    assert json.loads((out / "config.json").read_text())["model_type"] == "multi_modality"
    return out


@pytest.fixture(scope="module")
def hps_file(tmp_path_factory):
    """A tiny perturbed open_clip ViT as ``HPS_v2.1_compressed.pt`` stores it: fp16 tensors under
    ``state_dict``."""
    path = tmp_path_factory.mktemp("hps") / "HPS_tiny_compressed.pt"
    state = {k: v.half() for k, v in tiny_open_clip(seed=3).state_dict().items()}
    torch.save({"state_dict": state}, path)
    return path


def _verify(tmp_path, *args):
    out = tmp_path / "REPORT.md"
    code = cli.main(["verify", "--out", str(out), *map(str, args)])
    return code, out


def _rows(report: str) -> dict[str, str]:
    """check name -> its table row."""
    return {m.group(1): m.group(0) for m in re.finditer(r"^\| `(\w+)` \|.*$", report, re.M)}


def test_transformers_layout_and_hps_pass_every_check(janus_dir, hps_file, tmp_path, capsys):
    code, out = _verify(
        tmp_path, "--janus", janus_dir, "--hps", hps_file, "--hps-preset", "tiny", "--golden",
        "none", "--keep", tmp_path / "kept",
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = out.read_text()
    rows = _rows(report)
    assert set(rows) == JANUS_CHECKS | {"hps_scores", "hps_tokenizer"}
    for name, row in rows.items():
        want = "skipped" if name == "image_tokens_golden" else "pass"
        assert want in row, row
    assert "16/16 identical" in rows["image_tokens_all"]
    assert "all checks passed" in printed and "transformers layout" in report
    assert "## Stages" in report and "JAX: run" in report
    assert (tmp_path / "REPORT.png").is_file() and "![generated images](REPORT.png)" in report
    assert (tmp_path / "kept" / "janus" / "params").is_dir()
    assert (tmp_path / "kept" / "hps" / "tokenizer.json").is_file()


def test_deepseek_reference_is_transformers_own_load_of_the_same_weights(janus_dir, deepseek_dir):
    """The DeepSeek layout is streamed into transformers' Janus by the converter's key mapping;
    it must equal ``from_pretrained`` of the transformers twin exactly."""
    config = CONFIG
    loaded = janus_reference.load_reference(hf_reader.HFCheckpoint(deepseek_dir), config)
    want = janus_reference.load_reference(hf_reader.HFCheckpoint(janus_dir), config)
    got, want = loaded.state_dict(), want.state_dict()
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key


def _relative(row: str) -> float:
    return float(re.search(r"relative ([0-9.e+-]+)", row).group(1))


def test_deepseek_layout_in_bf16_measures_drift_and_skips_golden(deepseek_dir, tmp_path, capsys):
    code, out = _verify(tmp_path, "--janus", deepseek_dir, "--dtype", "bf16")
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = out.read_text()
    rows = _rows(report)
    assert set(rows) == JANUS_CHECKS and "deepseek layout" in report
    assert "no check failed" in printed
    for name in JANUS_CHECKS - {"image_tokens_golden"}:
        assert "measured" in rows[name], rows[name]
    # bf16 rounding, not a wrong weight (which would drift by ~100%)
    for name in ("text_logits", "siglip_features", "aligner_output", "vq_decode"):
        assert 0 < _relative(rows[name]) < 0.1, rows[name]
    assert "skipped" in rows["image_tokens_golden"]
    assert "the model is not Janus-Pro-1B" in report


def test_a_perturbed_converted_weight_fails_the_run_naming_the_checks(janus_dir, tmp_path, capsys):
    code, out = _verify(
        tmp_path, "--janus", janus_dir, "--golden", "none", "--perturb-converted", "1e-3"
    )
    printed = capsys.readouterr().out
    assert code == 1, printed
    rows = _rows(out.read_text())
    assert "FAIL" in rows["text_logits"]
    for unaffected in ("siglip_features", "aligner_output", "vq_decode"):
        assert "pass" in rows[unaffected], rows[unaffected]
    caught = re.search(r"caught by: (.*)", printed).group(1)
    assert "text_logits" in caught.split(", ")
    assert "model.language_model.layers.0.mlp.down_proj.weight" in printed


def test_bad_inputs_are_named_errors(janus_dir, hps_file, tmp_path, capsys, monkeypatch):
    neither = tmp_path / "neither"
    neither.mkdir()
    (neither / "config.json").write_text("{}")
    safetensors.numpy.save_file(
        {"encoder.weight": np.zeros(2, np.float32)}, neither / "model.safetensors"
    )
    assert _verify(tmp_path, "--janus", neither)[0] == 2
    assert "neither all transformers Janus keys" in capsys.readouterr().err
    assert _verify(tmp_path, "--janus", tmp_path / "kept-nothing")[0] == 2
    assert "no such directory" in capsys.readouterr().err
    assert _verify(tmp_path, "--janus", TOKENIZER)[0] == 2
    assert "is not a Hugging Face checkpoint: no config.json" in capsys.readouterr().err

    import huggingface_hub

    def offline(repo, **kw):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    assert _verify(tmp_path, "--janus", "deepseek-ai/Janus-Pro-1B")[0] == 2
    err = capsys.readouterr().err
    assert "no network" in err and "hf download deepseek-ai/Janus-Pro-1B --local-dir DIR" in err

    not_a_state_dict = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], not_a_state_dict)
    text_file = tmp_path / "notes.pt"
    text_file.write_text("not a checkpoint")
    for bad in (not_a_state_dict, text_file):
        assert _verify(tmp_path, "--janus", janus_dir, "--hps", bad, "--hps-preset", "tiny")[0] == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --hps {bad}: {bad}: ") and "Traceback" not in err

    (tmp_path / "REPORT.md").write_text("mine")
    assert _verify(tmp_path, "--janus", janus_dir)[0] == 2
    assert "exists" in capsys.readouterr().err
    assert (tmp_path / "REPORT.md").read_text() == "mine"


def test_missing_reference_libraries_name_the_extra(janus_dir, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip raises ImportError
    code, _ = _verify(tmp_path, "--janus", janus_dir, "--hps", tmp_path / "x.pt")
    assert code == 2
    err = capsys.readouterr().err
    assert "open_clip" in err and "pairuni-jax[verify]" in err


def test_golden_check_holds_a_mismatch_against_the_port_only_when_transformers_agrees():
    config = JanusConfig.janus_pro_1b()
    gold = np.array(golden.GOLDEN_FIRST_TOKENS + (7,) * 526)
    other = gold.copy()
    other[10] += 1
    auto = GoldenMode.AUTO
    check = golden.golden_check(auto, config, 17, gold, gold, judged=True)
    assert check.status is Status.PASS and "50/50 identical" in check.measured
    check = golden.golden_check(auto, config, 17, other, gold, judged=True)
    assert check.status is Status.FAIL and "first divergence at token 10" in check.measured
    check = golden.golden_check(auto, config, 17, other, other, judged=True)
    assert check.status is Status.MEASURED and "also differs" in check.detail
    assert golden.golden_check(auto, CONFIG, 17, gold, gold, judged=True).status is Status.SKIPPED
    assert golden.golden_check(GoldenMode.NONE, config, 17, gold, gold, judged=True).status is (
        Status.SKIPPED
    )


def test_comparisons_judge_scale_relative_tolerances_and_non_finite_values():
    want = np.array([100.0, -50.0])
    tolerance = checks.Tolerance(rtol=1e-4)
    near = checks.compare_arrays("a", "a", want + 5e-3, want, tolerance)
    far = checks.compare_arrays("a", "a", want + 2e-2, want, tolerance)
    assert near.status is Status.PASS and far.status is Status.FAIL
    assert checks.compare_arrays("a", "a", want * np.nan, want, tolerance).failed
    assert not checks.compare_arrays("a", "a", want + 1, want, tolerance, judged=False).failed
    tokens = checks.compare_tokens("t", "t", np.array([1, 2, 3]), np.array([1, 2]))
    assert tokens.failed and "first divergence at token 2" in tokens.measured
