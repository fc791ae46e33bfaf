"""Janus checkpoint conversion: transformers and DeepSeek layouts ↔ Orbax, on tiny random models.

The transformers checkpoint is a perturbed random ``JanusForConditionalGeneration`` saved in
several safetensors shards. The DeepSeek checkpoint is made from its state dict by renaming with
the spec's mapping table (``tests/data/janus_keys``, a copy of ``spec/janus_keys``): q/k/v fused,
pos_embed unsqueezed, plus the ``attn_pool.*`` and ``codebook_used`` tensors real files carry.
"""

import ast
import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from flax import nnx

from convert import janus as janus_cli
from pairuni_jax import sharding
from pairuni_jax.checkpoint import (
    convert,
    hf_config,
    hf_reader,
    hf_writer,
    janus_mapping,
    model_dir,
)
from pairuni_jax.dtypes import DType
from pairuni_jax.models.janus import JanusConfig
from tests import reference

CONFIG = JanusConfig.tiny()
KEYS_DIR = Path(__file__).parent / "data" / "janus_keys"
SIDE_FILES = {
    "tokenizer_config.json": '{"model_max_length": 512}',
    "special_tokens_map.json": "{}",
    "chat_template.jinja": "{{ messages }}",
}
POS_EMBED = "vision_model.vision_tower.pos_embed"


def _spec_lines(name: str) -> list[list[str]]:
    lines = (KEYS_DIR / name).read_text().splitlines()
    return [line.split("\t") for line in lines if line and not line.startswith("#")]


def _bits(x) -> np.ndarray:
    """The raw bits of an array or tensor, for bit-exact comparisons (bf16 included)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().view(torch.int16 if x.element_size() == 2 else torch.int32).numpy()
    return np.asarray(x).view(np.int16 if np.asarray(x).itemsize == 2 else np.int32)


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(_bits(x), _bits(y))


# -- the spec's DeepSeek ↔ transformers table, as rules on transformers keys ----------------------


def _rule(deepseek: str, hf: str) -> tuple[re.Pattern, str]:
    """Numbers that occur in the same order on both sides ({i}, {j}, VQ levels and blocks) become
    wildcards; other keys (``mid.0`` ↔ ``mid.block_1``, ``layers.2`` ↔ ``hidden_layers.0``) stay
    literal."""
    numbers = lambda k: [s for s in k.split(".") if s.isdigit()]  # noqa: E731
    if numbers(deepseek) != numbers(hf):
        return re.compile(re.escape(hf)), deepseek
    regex = r"\.".join(r"(\d+)" if s.isdigit() else re.escape(s) for s in hf.split("."))
    return re.compile(regex), ".".join("{}" if s.isdigit() else s for s in deepseek.split("."))


def _spec_rules() -> list[tuple[re.Pattern, str, int | None]]:
    rules = []
    for deepseek, _, hf in _spec_lines("key_mapping_deepseek_to_hf.tsv"):
        if hf == "None":
            continue
        parts = ast.literal_eval(hf) if hf.startswith("[") else [hf]
        for index, part in enumerate(parts):
            ds, tf = (k.replace("{i}", "0").replace("{j}", "0") for k in (deepseek, part))
            rules.append((*_rule(ds, tf), index if len(parts) > 1 else None))
    return rules


SPEC_RULES = _spec_rules()


def _spec_rename(hf_key: str) -> tuple[str, int | None]:
    for pattern, template, part in SPEC_RULES:
        m = pattern.fullmatch(hf_key)
        if m:
            return template.format(*m.groups()), part
    raise AssertionError(f"{hf_key} is not in the spec's mapping table")


def _deepseek_state(hf_state: dict, seed: int = 1) -> dict[str, np.ndarray]:
    out, fused = {}, {}
    for key, value in hf_state.items():
        name, part = _spec_rename(key)
        if part is None:
            out[name] = value[None] if name == POS_EMBED else value
        else:
            fused.setdefault(name, {})[part] = value
    for name, parts in fused.items():
        out[name] = np.concatenate([parts[0], parts[1], parts[2]], axis=0)
    rng = np.random.default_rng(seed)
    width = CONFIG.vision.hidden_size
    scale = {1024: width, 2048: 2 * width, 4096: 4 * width}
    for key, shape_1b, _ in _spec_lines("keys_original_deepseek.tsv"):
        if janus_mapping.deepseek_dropped(key):
            shape = [scale.get(d, d) for d in json.loads(shape_1b)]
            out[key] = rng.normal(size=shape).astype(np.float32)
    return out


def _hub_style_deepseek_config(c: JanusConfig) -> dict:
    """Shaped like deepseek-ai/Janus-Pro-*/config.json (spec §1): variant names, few sizes."""
    t, h = c.text, c.text.hidden_size

    def mlp(din: int) -> dict:
        params = {"depth": 2, "input_dim": din, "n_embed": h, "projector_type": "mlp_gelu"}
        return {"cls": "MlpProjector", "params": params}

    return {
        "model_type": "multi_modality",
        "architectures": ["MultiModalityCausalLM"],
        "language_config": {
            "model_type": "llama",
            "hidden_size": h,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_layers,
            "num_attention_heads": t.num_heads,
            "num_key_value_heads": t.num_kv_heads,
            "vocab_size": t.vocab_size,
            "max_position_embeddings": t.max_position_embeddings,
            "torch_dtype": "float32",
        },
        "vision_config": {
            "cls": "CLIPVisionTower",
            "params": {
                "image_size": c.vision.image_size,
                "model_name": "siglip_large_patch16_384",
                "select_feature": "same",
                "select_layer": -1,
            },
        },
        "aligner_config": mlp(c.vision.hidden_size),
        "gen_vision_config": {
            "cls": "VQ-16",
            "params": {"image_token_size": c.vq.num_embeddings, "n_embed": c.vq.embed_dim},
        },
        "gen_aligner_config": mlp(c.vq.embed_dim),
        "gen_head_config": {
            "cls": "vision_head",
            "params": {
                "image_token_embed": h,
                "image_token_size": c.vq.num_embeddings,
                "n_embed": h,
            },
        },
        "torch_dtype": "float32",
    }


def _torch(value: np.ndarray) -> torch.Tensor:
    value = np.ascontiguousarray(value)
    if value.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(value.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(value)


def _write_checkpoint(
    directory: Path, state: dict, config: dict, storage: str = "safetensors"
) -> Path:
    directory.mkdir(parents=True)
    if storage == "safetensors":
        safetensors.numpy.save_file(state, str(directory / "model.safetensors"))
    else:
        torch.save({k: _torch(v) for k, v in state.items()}, directory / "pytorch_model.bin")
    (directory / "config.json").write_text(json.dumps(config))
    return directory


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_model():
    return reference.tiny_hf_model(CONFIG, seed=0)


@pytest.fixture(scope="module")
def hf_state(hf_model):
    return reference.state_dict_numpy(hf_model)


@pytest.fixture(scope="module")
def tf_dir(hf_model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("transformers") / "ckpt"
    hf_model.save_pretrained(directory, max_shard_size="1MB")
    for name, text in SIDE_FILES.items():
        (directory / name).write_text(text)
    return directory


@pytest.fixture(scope="module")
def orbax_dir(tf_dir):
    return convert.hf_to_orbax(tf_dir, tf_dir.parent / "orbax", progress=False)


@pytest.fixture(scope="module")
def orbax_params(orbax_dir):
    return convert.restore_numpy(orbax_dir)


@pytest.fixture(scope="module")
def deepseek_state(hf_state):
    return _deepseek_state(hf_state)


# -- transformers format --------------------------------------------------------------------------


def test_transformers_shards_to_orbax_match_torch_logits_and_pixels(hf_model, tf_dir, orbax_dir):
    shards = set(
        json.loads((tf_dir / "model.safetensors.index.json").read_text())["weight_map"].values()
    )
    assert len(shards) >= 3
    config, dtype = convert.read_model_config(orbax_dir)
    assert config == CONFIG and dtype == np.float32
    for name, text in SIDE_FILES.items():
        assert (orbax_dir / name).read_text() == text
    model = convert.load_model(orbax_dir)

    rng = np.random.default_rng(0)
    text = rng.integers(10, CONFIG.text.vocab_size, size=9)
    ids = np.array([[1, *text[:4], *[CONFIG.image_token_id] * CONFIG.num_image_tokens, *text[4:]]])
    size = CONFIG.vision.image_size
    pixels = rng.uniform(-1, 1, size=(1, size, size, 3)).astype(np.float32)
    tokens = rng.integers(0, CONFIG.vq.num_embeddings, size=(2, CONFIG.vq.num_tokens))
    with torch.no_grad():
        want = hf_model(
            input_ids=torch.from_numpy(ids), pixel_values=reference.to_torch_pixels(pixels)
        ).logits
        want_pixels = (
            hf_model.model.vqmodel.decode(torch.from_numpy(tokens)).numpy().transpose(0, 2, 3, 1)
        )
    embeds = model.embed(jnp.asarray(ids), jnp.asarray(pixels))
    positions = jnp.arange(ids.shape[1])[None]
    hidden, _ = model(embeds, positions, jnp.ones(ids.shape, bool))
    got = np.asarray(model.text_logits(hidden))
    got_pixels = np.asarray(model.decode_image_tokens(jnp.asarray(tokens)))
    print(
        f"logits max|diff| {np.abs(got - want.numpy()).max():.1e}, "
        f"pixels max|diff| {np.abs(got_pixels - want_pixels).max():.1e}"
    )
    assert np.abs(want.numpy()).max() > 1.0
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(got_pixels, want_pixels, atol=1e-4, rtol=1e-4)


def test_orbax_to_transformers_is_bit_exact_and_loads(hf_model, orbax_dir, tmp_path):
    out = convert.orbax_to_hf(orbax_dir, tmp_path / "hf", max_shard_size="1MB", progress=False)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 3
    for name in (*SIDE_FILES, "generation_config.json"):
        assert (out / name).is_file()
    loaded = transformers.JanusForConditionalGeneration.from_pretrained(out)
    want, got = hf_model.state_dict(), loaded.state_dict()
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        np.testing.assert_array_equal(_bits(got[key]), _bits(want[key]), err_msg=key)


def test_bf16_round_trip_is_bit_exact_and_fp32_widening_exact(hf_model, tmp_path):
    bf16 = reference.tiny_hf_model(CONFIG, seed=0).to(torch.bfloat16)
    bf16.save_pretrained(tmp_path / "bf16")
    orbax = convert.hf_to_orbax(tmp_path / "bf16", tmp_path / "orbax", progress=False)
    assert convert.read_model_config(orbax)[1] == jnp.bfloat16
    out = convert.orbax_to_hf(orbax, tmp_path / "back", progress=False)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    loaded = transformers.JanusForConditionalGeneration.from_pretrained(out, dtype=torch.bfloat16)
    want, got = bf16.state_dict(), loaded.state_dict()
    for key in want:
        assert got[key].dtype == torch.bfloat16, key
        np.testing.assert_array_equal(_bits(got[key]), _bits(want[key]), err_msg=key)

    wide = convert.hf_to_orbax(tmp_path / "bf16", tmp_path / "wide", dtype="fp32", progress=False)
    narrow, widened = convert.restore_numpy(orbax), convert.restore_numpy(wide)
    _assert_trees_equal(jax.tree.map(lambda x: x.astype(np.float32), narrow), widened)


# -- DeepSeek format ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "storage,dtype", [("bin", "fp32"), ("safetensors", "fp32"), ("bin", "bf16")]
)
def test_deepseek_checkpoint_converts_to_the_same_params(
    storage, dtype, deepseek_state, orbax_params, tmp_path
):
    """bf16: a torch-cast bf16 .bin gives the transformers path's params rounded to bf16."""
    want = orbax_params
    if dtype == "bf16":
        cast = lambda v: torch.from_numpy(v).to(torch.bfloat16).view(torch.int16).numpy()  # noqa: E731
        deepseek_state = {k: cast(v).view(ml_dtypes.bfloat16) for k, v in deepseek_state.items()}
        want = jax.tree.map(lambda x: x.astype(ml_dtypes.bfloat16), orbax_params)
    config = hf_config.deepseek_config(CONFIG, "float32")
    src = _write_checkpoint(tmp_path / "ds", deepseek_state, config, storage)
    out = convert.hf_to_orbax(src, tmp_path / "orbax", progress=False)
    meta = model_dir.read_config(out)
    assert meta["source_format"] == "deepseek"
    assert convert.read_model_config(out) == (CONFIG, DType(dtype).dtype)
    _assert_trees_equal(convert.restore_numpy(out), want)


def test_deepseek_round_trip_equals_input_except_dropped_keys(deepseek_state, tmp_path):
    src = _write_checkpoint(
        tmp_path / "ds", deepseek_state, hf_config.deepseek_config(CONFIG, "float32")
    )
    orbax = convert.hf_to_orbax(src, tmp_path / "orbax", format="deepseek", progress=False)
    out = convert.orbax_to_hf(orbax, tmp_path / "back", format="deepseek", progress=False)
    back = safetensors.numpy.load_file(out / "model.safetensors")
    kept = {k: v for k, v in deepseek_state.items() if not janus_mapping.deepseek_dropped(k)}
    assert len(kept) == len(deepseek_state) - 14
    assert sorted(back) == sorted(kept)
    for key, value in kept.items():
        np.testing.assert_array_equal(_bits(back[key]), _bits(value), err_msg=key)
    written = json.loads((out / "config.json").read_text())
    assert written["model_type"] == "multi_modality"
    again = convert.hf_to_orbax(out, tmp_path / "again", progress=False)
    assert convert.read_model_config(again)[0] == CONFIG


def test_hub_style_deepseek_config_takes_sizes_from_the_checkpoint(
    deepseek_state, orbax_params, tmp_path
):
    """The hub config names siglip_large / VQ-16; the tiny sizes come from the tensors."""
    src = _write_checkpoint(
        tmp_path / "ds", deepseek_state, _hub_style_deepseek_config(CONFIG), "bin"
    )
    out = convert.hf_to_orbax(src, tmp_path / "orbax", progress=False)
    config = convert.read_model_config(out)[0]
    assert (config.text, config.vq, config.aligner_depth) == (
        CONFIG.text,
        CONFIG.vq,
        CONFIG.aligner_depth,
    )
    assert config.vision.hidden_size == 32 and config.vision.num_heads == 16  # the variant's heads
    _assert_trees_equal(convert.restore_numpy(out), orbax_params)


def _tsv_shapes(name: str, column: int, layers: int, blocks: int) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for key, *sizes in _spec_lines(name):
        for i in range(layers if "{i}" in key else 1):
            for j in range(blocks if "{j}" in key else 1):
                shapes[key.format(i=i, j=j)] = tuple(json.loads(sizes[column]))
    return shapes


def test_real_sizes_are_read_from_spec_key_tables():
    """Janus-Pro-1B (transformers layout and config), -7B (DeepSeek layout and hub config)."""
    shapes_1b = _tsv_shapes("keys_hf_janus.tsv", 0, 24, 24)
    config_1b = hf_config.transformers_config(JanusConfig.janus_pro_1b(), "bfloat16").to_dict()
    got = hf_config.from_checkpoint(shapes_1b, config_1b, "transformers", "1b/config.json")
    assert got == JanusConfig.janus_pro_1b()

    shapes_7b = {}
    for key, shape in _tsv_shapes("keys_original_deepseek.tsv", 1, 30, 24).items():
        if not janus_mapping.deepseek_dropped(key):
            for name, value in janus_mapping.deepseek_to_hf(key, janus_mapping.shape_only(shape)):
                shapes_7b[name] = value.shape
    hub_7b = _hub_style_deepseek_config(JanusConfig.janus_pro_7b())
    hub_7b["language_config"] = {  # what the hub file states: no widths, no heads
        "max_position_embeddings": 16384,
        "model_type": "llama",
        "num_hidden_layers": 30,
        "torch_dtype": "bfloat16",
        "vocab_size": 102400,
    }
    got = hf_config.from_checkpoint(shapes_7b, hub_7b, "deepseek", "7b/config.json")
    assert got == JanusConfig.janus_pro_7b()


def test_hf_to_deepseek_names_invert_the_spec_table():
    for deepseek, _, hf in _spec_lines("key_mapping_deepseek_to_hf.tsv"):
        if hf != "None":
            parts = ast.literal_eval(hf) if hf.startswith("[") else [hf]
            for part in parts:
                got = janus_mapping.hf_to_deepseek_key(part.format(i=3, j=5))
                assert got == deepseek.format(i=3, j=5)


# -- errors: each named, nothing written ----------------------------------------------------------


def _assert_nothing_written(dst: Path):
    assert not dst.exists()
    assert not [p for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}.tmp")]


def _broken(tmp_path, tf_dir, hf_state, edit) -> Path:
    state = dict(hf_state)
    edit(state)
    return _write_checkpoint(
        tmp_path / "src", state, json.loads((tf_dir / "config.json").read_text())
    )


def test_error_missing_key(tmp_path, tf_dir, hf_state):
    key = "model.language_model.layers.1.mlp.up_proj.weight"
    src = _broken(tmp_path, tf_dir, hf_state, lambda s: s.pop(key))
    with pytest.raises(janus_mapping.MappingError, match=f"missing key '{re.escape(key)}'"):
        convert.hf_to_orbax(src, tmp_path / "out", progress=False)
    _assert_nothing_written(tmp_path / "out")


def test_error_unexpected_key(tmp_path, tf_dir, hf_state):
    key = "model.language_model.layers.0.mlp.extra_proj.weight"
    src = _broken(
        tmp_path, tf_dir, hf_state, lambda s: s.update({key: np.zeros((2, 2), np.float32)})
    )
    with pytest.raises(janus_mapping.MappingError, match=f"unexpected key '{re.escape(key)}'"):
        convert.hf_to_orbax(src, tmp_path / "out", progress=False)


def test_error_shape_mismatch(tmp_path, tf_dir, hf_state):
    key = "model.language_model.layers.1.mlp.up_proj.weight"
    src = _broken(
        tmp_path, tf_dir, hf_state, lambda s: s.update({key: np.zeros((100, 64), np.float32)})
    )
    with pytest.raises(
        janus_mapping.MappingError,
        match=re.escape(f"shape mismatch for '{key}': expected [128, 64], got [100, 64]"),
    ):
        convert.hf_to_orbax(src, tmp_path / "out", progress=False)


def test_error_unsupported_dtypes(tmp_path, tf_dir, hf_state):
    key = "model.language_model.norm.weight"
    src = _broken(tmp_path, tf_dir, hf_state, lambda s: s.update({key: np.zeros(64, np.uint8)}))
    with pytest.raises(
        hf_reader.CheckpointError, match=f"tensor '{re.escape(key)}' has unsupported dtype U8"
    ):
        convert.hf_to_orbax(src, tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="unsupported dtype 'fp16'"):
        convert.hf_to_orbax(src, tmp_path / "out", dtype="fp16", progress=False)


def test_error_unknown_format(tmp_path, tf_dir, hf_state):
    src = _broken(tmp_path, tf_dir, hf_state, lambda s: None)
    (src / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(hf_reader.CheckpointError, match="unknown format, model_type 'llava'"):
        convert.hf_to_orbax(src, tmp_path / "out", progress=False)
    (src / "config.json").write_text("{}")
    with pytest.raises(
        hf_reader.CheckpointError, match="format deepseek was requested, but the keys"
    ):
        convert.hf_to_orbax(src, tmp_path / "out", format="deepseek", progress=False)


def test_error_config_disagrees_with_checkpoint(tmp_path, deepseek_state):
    config = _hub_style_deepseek_config(CONFIG)
    config["language_config"]["num_hidden_layers"] = 30
    src = _write_checkpoint(tmp_path / "ds", deepseek_state, config)
    with pytest.raises(
        hf_reader.CheckpointError,
        match=r"language_config.num_hidden_layers = 30, but the checkpoint has 2",
    ):
        convert.hf_to_orbax(src, tmp_path / "out", progress=False)


def test_error_not_a_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(
        hf_reader.CheckpointError, match="is not a Hugging Face checkpoint: none of"
    ):
        convert.hf_to_orbax(tmp_path / "empty", tmp_path / "out", progress=False)
    with pytest.raises(model_dir.NotAModelDirError, match="is not an Orbax model directory"):
        convert.orbax_to_hf(tmp_path / "empty", tmp_path / "out", progress=False)


def test_hub_id_is_fetched_with_huggingface_hub(tf_dir, orbax_params, tmp_path, monkeypatch):
    import huggingface_hub

    asked = []
    monkeypatch.setattr(
        huggingface_hub, "snapshot_download", lambda repo: asked.append(repo) or tf_dir
    )
    out = convert.hf_to_orbax("someone/janus-tiny", tmp_path / "orbax", progress=False)
    assert asked == ["someone/janus-tiny"]
    _assert_trees_equal(convert.restore_numpy(out), orbax_params)

    def offline(repo):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(
        hf_reader.CheckpointError, match="fetching it from the Hugging Face hub failed"
    ):
        convert.hf_to_orbax("someone/other", tmp_path / "other", progress=False)
    with pytest.raises(hf_reader.CheckpointError, match="no such directory"):
        convert.hf_to_orbax(tmp_path / "a" / "b" / "c", tmp_path / "other", progress=False)


def test_failure_part_way_leaves_no_output(orbax_dir, tf_dir, tmp_path, monkeypatch):
    calls = []
    real_write = hf_writer.write_safetensors

    def fail_on_second_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        real_write(*args, **kwargs)

    monkeypatch.setattr(hf_writer, "write_safetensors", fail_on_second_shard)
    with pytest.raises(OSError, match="disk full"):
        convert.orbax_to_hf(orbax_dir, tmp_path / "hf", max_shard_size="1MB", progress=False)
    _assert_nothing_written(tmp_path / "hf")

    def fail_saving(directory, params):
        (Path(directory) / "params").mkdir()
        raise OSError("disk full")

    monkeypatch.setattr(convert, "save_host_params", fail_saving)
    with pytest.raises(OSError, match="disk full"):
        convert.hf_to_orbax(tf_dir, tmp_path / "orbax", progress=False)
    _assert_nothing_written(tmp_path / "orbax")


# -- restore on a mesh, CLI -----------------------------------------------------------------------


def test_load_model_on_mesh_is_sharded_while_reading(orbax_dir, orbax_params, mesh):
    model = convert.load_model(orbax_dir, mesh)
    state = nnx.state(model)
    expected = jax.tree.leaves(nnx.to_pure_dict(sharding.state_shardings(state, mesh)))
    values = nnx.to_pure_dict(state)
    for (path, array), want in zip(
        jax.tree_util.tree_leaves_with_path(values), expected, strict=True
    ):
        assert array.sharding == want, path
    kernel = model.language_model.layers.mlp.up_proj.kernel[...]
    assert kernel.sharding.spec == sharding.logical_to_spec(("layers", "embed", "mlp"))
    table = model.language_model.embed_tokens.embedding[...]
    assert table.addressable_shards[0].data.shape == (
        CONFIG.text.vocab_size,
        CONFIG.text.hidden_size // 4,
    )
    _assert_trees_equal(jax.tree.map(np.asarray, values), orbax_params)


def test_cli_commands(tmp_path, deepseek_state, capsys):
    src = _write_checkpoint(
        tmp_path / "ds", deepseek_state, hf_config.deepseek_config(CONFIG, "float32"), "bin"
    )
    assert (
        janus_cli.main(["hf-to-orbax", str(src), str(tmp_path / "orbax"), "--dtype", "bf16"]) == 0
    )
    assert convert.read_model_config(tmp_path / "orbax") == (CONFIG, np.dtype(ml_dtypes.bfloat16))
    assert "tensor" in capsys.readouterr().err  # the progress bar
    args = ["orbax-to-hf", str(tmp_path / "orbax"), str(tmp_path / "hf"), "--format", "deepseek"]
    assert janus_cli.main(args) == 0
    assert janus_cli.main(args) == 1
    assert "already exists" in capsys.readouterr().err
    assert janus_cli.main(["orbax-to-hf", str(src), str(tmp_path / "x")]) == 1
    assert "is not an Orbax model directory" in capsys.readouterr().err
