"""Broken Hugging Face checkpoints get one named error, not a traceback or a wrong diagnosis:
malformed safetensors headers, truncated files, and a mistyped relative path (not a hub id)."""

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from convert import janus as janus_cli
from pairuni_jax.checkpoint import convert, hf_reader

CONFIG = {"model_type": "janus"}


def _checkpoint(directory, header=None, data=b""):
    """A checkpoint directory whose model.safetensors has ``header`` (as a buggy writer would
    lay it out: 8-byte length, JSON, data)."""
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(CONFIG))
    if header is not None:
        encoded = json.dumps(header).encode()
        encoded += b" " * (-len(encoded) % 8)
        (directory / "model.safetensors").write_bytes(
            struct.pack("<Q", len(encoded)) + encoded + data
        )
    return directory


@pytest.mark.parametrize(
    "header, says",
    [
        ({"lm_head.weight": {"dtype": "F32", "shape": [2]}}, "data_offsets"),
        ([{"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}], "malformed header"),
        ({"lm_head.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, "truncated"),
    ],
    ids=["entry without data_offsets", "header is a list", "data cut short"],
)
def test_malformed_safetensors_is_named(tmp_path, capsys, header, says):
    src = _checkpoint(tmp_path / "hf", header, data=b"\0" * 8)
    with pytest.raises(hf_reader.CheckpointError, match=says) as error:
        hf_reader.HFCheckpoint(src)
    assert str(src / "model.safetensors") in str(error.value)
    assert janus_cli.main(["hf-to-orbax", str(src), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_truncated_safetensors_download(tmp_path):
    """A real file (safetensors' own writer) cut short, as an interrupted download leaves it."""
    src = _checkpoint(tmp_path / "hf")
    save_file({"lm_head.weight": torch.ones(64, 8)}, src / "model.safetensors")
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(hf_reader.CheckpointError, match="truncated"):
        hf_reader.HFCheckpoint(src)


def test_truncated_bin_is_not_called_legacy(tmp_path):
    src = _checkpoint(tmp_path / "hf")
    torch.save({"lm_head.weight": torch.ones(64, 8)}, src / "pytorch_model.bin")
    data = (src / "pytorch_model.bin").read_bytes()
    (src / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(hf_reader.CheckpointError, match="truncated or corrupt") as error:
        hf_reader.HFCheckpoint(src)
    assert "legacy" not in str(error.value) and "pytorch_model.bin" in str(error.value)


def test_legacy_bin_is_still_recognised(tmp_path):
    src = _checkpoint(tmp_path / "hf")
    torch.save(
        {"w": torch.ones(2)}, src / "pytorch_model.bin", _use_new_zipfile_serialization=False
    )
    with pytest.raises(hf_reader.CheckpointError, match="legacy"):
        hf_reader.HFCheckpoint(src)


def test_missing_relative_path_is_not_a_hub_id(tmp_path, monkeypatch):
    import huggingface_hub

    def no_network(repo):
        raise AssertionError(f"asked the hub for {repo}")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpts").mkdir()
    for src in ("ckpts/janus-pro", "./janus-pro", "../janus/pro"):
        with pytest.raises(hf_reader.CheckpointError, match="no such directory"):
            convert.hf_to_orbax(src, tmp_path / "out", progress=False)
