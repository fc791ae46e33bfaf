"""Janus-Pro checkpoints: Hugging Face (transformers or DeepSeek layout) ↔ Orbax model directories.

- ``hf_to_orbax``: streams the tensors of a Hugging Face checkpoint into preallocated Flax-layout
  arrays (stacked layers written slice by slice), then saves an Orbax model directory. Host memory
  peaks at about the model once plus the largest tensor.
- ``orbax_to_hf``: restores the params to host memory and writes safetensors tensor by tensor, in
  either layout, with a config.json for that layout.
- ``load_model``: restores a model directory into a ``Janus`` module, sharded on a mesh while
  reading (each host reads only its slices), never building the full model on one device.

Both directions are exact: the round trip is bit-identical in the stored dtype. Everything is
checked before anything is written (unknown, missing or mis-shaped keys are named), and the output
appears under its final name only when complete.

Model directory ``config.json``: ``{"kind": "janus", "janus": JanusConfig.to_dict(), "dtype": ...,
"source": ..., "source_format": ...}``.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh
from tqdm import tqdm

from pairuni_jax import destinations
from pairuni_jax.checkpoint import hf_config, hf_reader, hf_writer, janus_mapping, model_dir
from pairuni_jax.checkpoint.hf_reader import TRANSFORMERS
from pairuni_jax.dtypes import DType
from pairuni_jax.models.janus import Janus, JanusConfig
from pairuni_jax.models.stack import RematPolicy

KIND = "janus"
DEFAULT_MAX_SHARD_SIZE = "5GB"
# Copied verbatim in both directions when present.
SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "preprocessor_config.json",
    "processor_config.json",
    "generation_config.json",
)
SIDE_FILE_PATTERNS = ("chat_template*",)


def _dtype(name: str | None) -> np.dtype | None:
    return None if name is None else DType.parse(name).dtype


def side_files(directory: Path) -> list[Path]:
    """The tokenizer, processor, chat-template and generation files present in ``directory``."""
    files = [directory / name for name in SIDE_FILES]
    files += [p for pattern in SIDE_FILE_PATTERNS for p in sorted(directory.glob(pattern))]
    return [f for f in files if f.is_file()]


def abstract_params(config: JanusConfig, param_dtype: Any) -> dict:
    """The model's param tree as a pure dict of ``jax.ShapeDtypeStruct`` (nothing allocated)."""
    abstract = nnx.eval_shape(lambda: Janus(config, param_dtype=param_dtype, rngs=nnx.Rngs(0)))
    return nnx.to_pure_dict(nnx.state(abstract))


def _node(tree: Mapping, path: tuple) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def _plan(
    abstract: Mapping, shapes: Mapping[str, tuple[int, ...]], ckpt: hf_reader.HFCheckpoint
) -> dict[str, tuple[tuple, int | None, str]]:
    """Transformers key → (Flax path, stacked layer or None, Flax leaf), every key and shape
    checked against the model before any tensor is read."""
    expected = {
        key: (path, layer, leaf) for key, path, layer, leaf in janus_mapping.hf_keys_of(abstract)
    }
    unexpected = [k for k in shapes if k not in expected]
    missing = [k for k in expected if k not in shapes]
    where = ckpt.directory
    if unexpected:
        names = ", ".join(repr(ckpt.source_key(k)) for k in unexpected[:5])
        raise janus_mapping.MappingError(
            f"{where}: unexpected key {names} ({len(unexpected)} in all): not part of the model"
        )
    if missing:
        names = ", ".join(repr(ckpt.source_key(k)) for k in missing[:5])
        raise janus_mapping.MappingError(f"{where}: missing key {names} ({len(missing)} in all)")
    for key, (path, layer, leaf) in expected.items():
        target = _node(abstract, path).shape
        want = target[1:] if layer is not None else target
        got = janus_mapping.to_flax_layout(janus_mapping.shape_only(shapes[key]), leaf).shape
        if got != tuple(want):
            torch_want = janus_mapping.to_torch_layout(janus_mapping.shape_only(want), leaf).shape
            raise janus_mapping.MappingError(
                f"{where}: shape mismatch for {ckpt.source_key(key)!r}: "
                f"expected {list(torch_want)}, got {list(shapes[key])}"
            )
    return expected


def hf_to_orbax(
    src: str | Path,
    dst: str | Path,
    *,
    dtype: str | None = None,
    format: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Converts a Hugging Face Janus checkpoint into an Orbax model directory; returns ``dst``.

    src: a checkpoint directory (or a hub id, fetched with huggingface_hub).
    dtype: ``"bf16"`` or ``"fp32"`` for the stored params; None keeps the checkpoint's dtype
      (bf16 when every converted tensor is bf16, else fp32, which holds bf16/fp16/fp32 exactly).
    format: ``"auto"`` (from the keys and config.json), ``"transformers"`` or ``"deepseek"``.
    """
    target_dtype = _dtype(dtype)
    local_source = [src] if Path(src).expanduser().exists() else []  # else: a hub id
    destinations.check(dst, sources=local_source, overwrite=overwrite)
    ckpt = hf_reader.HFCheckpoint(src, format)
    shapes = ckpt.hf_shapes()
    config = hf_config.from_checkpoint(
        shapes, ckpt.config, ckpt.format, str(ckpt.directory / hf_reader.CONFIG_FILE)
    )
    if target_dtype is None:
        target_dtype = (DType.BF16 if ckpt.stored_dtypes() == {"BF16"} else DType.FP32).dtype
    if config.tie_word_embeddings:
        print(
            f"{ckpt.directory}: no lm_head.weight and tie_word_embeddings is true: the LM head is "
            f"the token embeddings (as transformers loads it), and stays tied on export",
            file=sys.stderr,
        )
    abstract = abstract_params(config, target_dtype)
    plan = _plan(abstract, shapes, ckpt)
    params = jax.tree.map(lambda s: np.empty(s.shape, s.dtype), abstract)
    with tqdm(total=len(plan), unit="tensor", desc="hf-to-orbax", disable=not progress) as bar:
        for key, value in ckpt.iter_hf_tensors():
            path, layer, leaf = plan[key]
            array = _node(params, path)
            value = janus_mapping.to_flax_layout(value, leaf)
            janus_mapping.copy_into(array if layer is None else array[layer], value)
            bar.update()
    meta = {
        "kind": KIND,
        "janus": config.to_dict(),
        "dtype": target_dtype.name,
        "source": str(src),
        "source_format": ckpt.format,
    }
    with model_dir.atomic_directory(dst, overwrite=overwrite, command="hf-to-orbax") as tmp:
        save_host_params(tmp, params)
        (tmp / model_dir.CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        for file in side_files(ckpt.directory):
            shutil.copy2(file, tmp / file.name)
    return Path(dst)


def save_host_params(directory: Path, params: dict) -> None:
    """Saves numpy params under ``directory/params`` like ``model_dir.save_params``, but
    without Orbax's two extra copies of the model: its defensive deep copy of host arrays
    (ours are not modified while saving) and the zstd buffers (weights barely compress)."""
    registry = ocp.type_handlers.create_type_handler_registry(
        (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
        (jax.Array, ocp.type_handlers.ArrayHandler()),
    )
    handler = ocp.PyTreeCheckpointHandler(type_handler_registry=registry, use_compression=False)
    with ocp.Checkpointer(handler) as checkpointer:
        checkpointer.save(directory / model_dir.PARAMS_SUBDIR, args=ocp.args.PyTreeSave(params))


def read_model_config(directory: str | Path) -> tuple[JanusConfig, np.dtype]:
    """The JanusConfig and stored param dtype of a Janus model directory."""
    meta = model_dir.read_config(directory)
    if meta.get("kind") != KIND:
        raise model_dir.NotAModelDirError(
            f"{directory}/{model_dir.CONFIG_FILE}: kind is {meta.get('kind')!r}, expected {KIND!r} "
            f"(write it with `pairuni convert hf-to-orbax`)"
        )
    return JanusConfig.from_dict(meta["janus"]), np.dtype(jnp.dtype(meta["dtype"]))


def restore_numpy(directory: str | Path) -> dict:
    """The params of a model directory as host numpy arrays, in the model's pure-dict structure."""
    path = Path(directory).absolute() / model_dir.PARAMS_SUBDIR
    with ocp.PyTreeCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(path).item_metadata.tree
        args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
        return _int_keys(checkpointer.restore(path, restore_args=args))


def _int_keys(tree: Any) -> Any:
    """Orbax stores dict keys as strings; the model's pure dict indexes ``nnx.List`` by int."""
    if isinstance(tree, dict):
        return {int(k) if k.isdigit() else k: _int_keys(v) for k, v in tree.items()}
    return tree


def _natural(key: str) -> list:
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", key)]


def _out_tensors(params: Mapping, fmt: str, dtype: np.dtype) -> list[hf_writer.OutTensor]:
    """The tensors of the exported checkpoint, in natural key order, each produced on demand."""
    sources = {
        key: (path, layer, leaf) for key, path, layer, leaf in janus_mapping.hf_keys_of(params)
    }

    def torch_tensor(key: str, stand_in: bool = False) -> np.ndarray:
        path, layer, leaf = sources[key]
        array = _node(params, path)
        if stand_in:
            array = janus_mapping.shape_only(array.shape)
        return janus_mapping.to_torch_layout(array if layer is None else array[layer], leaf)

    if fmt == TRANSFORMERS:
        groups = {key: [key] for key in sources}
        combine = lambda name, parts: parts[0]  # noqa: E731
    else:
        groups = janus_mapping.deepseek_groups(list(sources))
        combine = janus_mapping.join_deepseek

    def produce(name: str, parts: list[str]):
        return lambda: combine(name, [torch_tensor(k) for k in parts])

    out = []
    for name in sorted(groups, key=_natural):
        parts = groups[name]
        shape = combine(name, [torch_tensor(k, stand_in=True) for k in parts]).shape
        out.append(hf_writer.OutTensor(name, shape, dtype, produce(name, parts)))
    return out


def orbax_to_hf(
    src: str | Path,
    dst: str | Path,
    *,
    format: str = TRANSFORMERS,
    dtype: str | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Exports an Orbax model directory as a Hugging Face checkpoint; returns ``dst``.

    format: ``"transformers"`` (loads with ``JanusForConditionalGeneration.from_pretrained``) or
      ``"deepseek"`` (the original ``MultiModalityCausalLM`` key layout; the unused
      ``attn_pool.*`` and ``codebook_used`` tensors are not written).
    dtype: ``"bf16"`` / ``"fp32"``; None keeps the stored dtype.
    max_shard_size: bytes per safetensors file (``"5GB"``, ``"500MB"``, or an int).
    """
    if format not in hf_reader.FORMATS:
        raise ValueError(f"unknown format {format!r}: expected {' or '.join(hf_reader.FORMATS)}")
    shard_bytes = hf_writer.parse_size(max_shard_size)
    destinations.check(dst, sources=[src], overwrite=overwrite)
    config, stored = read_model_config(src)
    out_dtype = _dtype(dtype) or stored
    if format == TRANSFORMERS:
        write_config = hf_config.transformers_config(config, out_dtype.name).save_pretrained
    else:
        text = json.dumps(hf_config.deepseek_config(config, out_dtype.name), indent=2) + "\n"
        write_config = lambda d: (d / hf_reader.CONFIG_FILE).write_text(text)  # noqa: E731
    params = restore_numpy(src)
    tensors = _out_tensors(params, format, out_dtype)
    with model_dir.atomic_directory(dst, overwrite=overwrite, command="orbax-to-hf") as tmp:
        hf_writer.write_checkpoint(tmp, tensors, shard_bytes, progress)
        write_config(tmp)
        for file in side_files(Path(src)):
            shutil.copy2(file, tmp / file.name)
    return Path(dst)


def load_model(
    directory: str | Path,
    mesh: Mesh | None = None,
    *,
    dtype: Any = jnp.float32,
    param_dtype: Any = None,
    scan_layers: bool = True,
    remat: RematPolicy = RematPolicy.NONE,
) -> Janus:
    """Restores a Janus model directory into a ``Janus`` module.

    mesh: shard every parameter by its logical axes while reading (Orbax sharded restore: each
      host reads only the slices its devices hold); None puts the model on the first device.
    dtype: compute dtype; param_dtype: param dtype (None: the stored one; otherwise cast on
      restore). scan_layers / remat: as ``Janus``.
    """
    config, stored = read_model_config(directory)
    param_dtype = stored if param_dtype is None else param_dtype
    abstract = nnx.eval_shape(
        lambda: Janus(
            config,
            dtype=dtype,
            param_dtype=param_dtype,
            scan_layers=scan_layers,
            remat=remat,
            rngs=nnx.Rngs(0),
        )
    )
    return model_dir.restore_module(directory, abstract, mesh)


def save_model(
    model: Janus,
    dst: str | Path,
    *,
    tokenizer_dir: str | Path | None = None,
    source: str = "pairuni",
    overwrite: bool = False,
) -> Path:
    """Writes ``model`` as a model directory that ``load_model`` restores (params in their
    stored dtype, ``config.json``, and the tokenizer files found in ``tokenizer_dir``)."""
    destinations.check(dst, overwrite=overwrite)
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))
    dtypes = sorted({np.dtype(x.dtype).name for x in jax.tree.leaves(params)})
    if len(dtypes) != 1:
        raise ValueError(f"save_model: params must share one dtype, got {dtypes}")
    meta = {
        "kind": KIND,
        "janus": model.config.to_dict(),
        "dtype": dtypes[0],
        "source": source,
        "source_format": "pairuni",
    }
    with model_dir.atomic_directory(dst, overwrite=overwrite, command=source) as tmp:
        save_host_params(tmp, params)
        (tmp / model_dir.CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        for file in side_files(Path(tokenizer_dir)) if tokenizer_dir is not None else ():
            shutil.copy2(file, tmp / file.name)
    return Path(dst)
