"""Hugging Face Janus checkpoints on disk: format detection and streaming tensor reads.

Two key layouts (spec/janus.md §3): the transformers ``janus`` format (``model.*`` and
``lm_head.*`` keys, config ``model_type: janus``) and the DeepSeek original (``language_model.*``,
``vision_model.*``, ``gen_*`` ... keys, config ``model_type: multi_modality``). Either may be
stored as safetensors (``model.safetensors``, or shards listed in ``model.safetensors.index.json``)
or as torch pickles (``pytorch_model.bin``, or shards listed in ``pytorch_model.bin.index.json``).

Tensors are read one at a time, and shapes and dtypes come from the file headers alone:

- safetensors: the header is read and validated by ``safetensors.safe_open`` (which also checks
  that the tensors cover the file exactly); the data is read with plain positioned reads into a
  fresh array, not through ``safe_open``'s memory map, so what was already converted does not
  stay resident (``scripts/bench_convert.py`` measures the peak);
- ``.bin``: ``torch.load(mmap=True, weights_only=True)``; the pages of a tensor are handed back
  to the kernel once it has been copied (``madvise``), for the same reason. torch is imported
  only here, so it is needed only for ``.bin`` checkpoints.

Every tensor is handed out under its transformers name: a DeepSeek checkpoint is renamed on the
fly (``janus_mapping.deepseek_to_hf``: fused qkv split, pos_embed squeezed) and its unused
``attn_pool.*`` / ``codebook_used`` tensors are skipped, as are ``rotary_emb.inv_freq`` buffers.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import mmap
import pickle
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from pairuni_jax.checkpoint import janus_mapping

TRANSFORMERS = "transformers"
DEEPSEEK = "deepseek"
FORMATS = (TRANSFORMERS, DEEPSEEK)
CONFIG_FILE = "config.json"
MODEL_TYPES = {"janus": TRANSFORMERS, "multi_modality": DEEPSEEK}
# (index file, single file) pairs, in order of preference.
WEIGHT_FILES = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)
DTYPES = {
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F16": np.dtype(np.float16),
    "F32": np.dtype(np.float32),
}
_DEEPSEEK_PREFIXES = (
    "language_model.",
    "vision_model.",
    "aligner.",
    "gen_vision_model.",
    "gen_aligner.",
    "gen_head.",
    "gen_embed.",
)
_TRANSFORMERS_PREFIXES = ("model.", "lm_head.")
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


class CheckpointError(ValueError):
    """A source that is not a readable Janus checkpoint; the message names the file or key."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One stored tensor, from the file header: file, shape, dtype name (safetensors style:
    ``BF16``, ``F32``, ...) and, for safetensors, the byte range of its data."""

    file: Path
    shape: tuple[int, ...]
    dtype: str
    start: int = 0
    end: int = 0


def resolve_source(src: str | Path) -> Path:
    """A local checkpoint directory, or a hub id (``owner/name``) fetched with huggingface_hub.

    A path that does not exist is taken for a hub id only when it has the ``owner/name`` form and
    nothing local claims it: it does not start with ``.``, ``/`` or ``~`` and ``owner`` is not a
    local directory (``ckpts/janus`` beside an existing ``ckpts/`` is a mistyped path).
    """
    path = Path(src)
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is not a checkpoint directory (it is a file)")
        return path
    text = str(src)
    if not _HUB_ID.fullmatch(text) or text.startswith((".", "~")):
        raise CheckpointError(f"{src}: no such directory")
    if Path(path.parts[0]).is_dir():
        raise CheckpointError(
            f"{src}: no such directory ({path.parts[0]}/ exists here, so it is not taken for "
            f"a Hugging Face hub repo id)"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(src)))
    except Exception as e:  # the hub client raises many types (network, auth, offline mode)
        raise CheckpointError(
            f"{src} is not a local directory, and fetching it from the Hugging Face hub failed: {e}"
        ) from e


class HFCheckpoint:
    """A Janus checkpoint directory: its config.json, its format and its tensors' headers.

    Attributes:
        directory: the checkpoint directory.
        format: ``"transformers"`` or ``"deepseek"``.
        config: the parsed config.json.
        tensors: every stored tensor by stored key, in file order.
    """

    def __init__(self, src: str | Path, format: str = "auto"):
        self.directory = resolve_source(src)
        self.config = _read_config(self.directory)
        self.tensors = _read_headers(self.directory)
        self.format = detect_format(list(self.tensors), self.config, format, self.directory)
        for key, info in self.tensors.items():
            if self._kept(key) and info.dtype not in DTYPES:
                raise CheckpointError(
                    f"{info.file}: tensor {key!r} has unsupported dtype {info.dtype} "
                    f"(supported: {', '.join(DTYPES)})"
                )

    def _kept(self, key: str) -> bool:
        if self.format == DEEPSEEK:
            return not janus_mapping.deepseek_dropped(key)
        return not key.endswith("rotary_emb.inv_freq")

    def stored_dtypes(self) -> set[str]:
        """Dtype names of the tensors that are converted (dropped ones excluded)."""
        return {info.dtype for key, info in self.tensors.items() if self._kept(key)}

    def _to_hf(self, key: str, value: np.ndarray) -> list[tuple[str, np.ndarray]]:
        if self.format == DEEPSEEK:
            return janus_mapping.deepseek_to_hf(key, value)
        return [(key, value)]

    def hf_shapes(self) -> dict[str, tuple[int, ...]]:
        """Transformers key → torch-layout shape of every converted tensor, from headers only."""
        shapes = {}
        for key, info in self.tensors.items():
            if self._kept(key):
                for name, value in self._to_hf(key, janus_mapping.shape_only(info.shape)):
                    shapes[name] = value.shape
        return shapes

    def source_key(self, hf_key: str) -> str:
        """The stored key a transformers key comes from (for error messages)."""
        return janus_mapping.hf_to_deepseek_key(hf_key) if self.format == DEEPSEEK else hf_key

    def iter_hf_tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        """(transformers key, torch-layout array) for every converted tensor, one at a time.

        Arrays from ``.bin`` files are read-only views of the memory-mapped file.
        """
        by_file: dict[Path, list[str]] = {}
        for key, info in self.tensors.items():
            if self._kept(key):
                by_file.setdefault(info.file, []).append(key)
        for file, keys in by_file.items():
            if file.suffix == ".safetensors":
                stream = self._iter_safetensors(file, keys)
            else:
                stream = _iter_torch(file, keys)
            for key, value in stream:
                yield from self._to_hf(key, value)

    def _iter_safetensors(self, file: Path, keys: list[str]) -> Iterator[tuple[str, np.ndarray]]:
        with open(file, "rb", buffering=0) as f:
            for key in sorted(keys, key=lambda k: self.tensors[k].start):
                info = self.tensors[key]
                out = np.empty(info.shape, DTYPES[info.dtype])
                _read_exactly(f, info.start, out, f"{file}: tensor {key!r}")
                yield key, out


def detect_format(keys: list[str], config: dict[str, Any], requested: str, where: Path) -> str:
    """``"transformers"`` or ``"deepseek"`` from the keys and config.json's ``model_type``.

    ``requested`` (``"auto"`` or a format) must agree with what the keys say.
    """
    if requested not in ("auto", *FORMATS):
        raise CheckpointError(f"unknown format {requested!r}: expected auto, {', '.join(FORMATS)}")
    model_type = config.get("model_type")
    if model_type is not None and model_type not in MODEL_TYPES:
        raise CheckpointError(
            f"{where / CONFIG_FILE}: unknown format, model_type {model_type!r} "
            f"(expected {' or '.join(map(repr, MODEL_TYPES))})"
        )
    found = {
        fmt
        for fmt, prefixes in (
            (TRANSFORMERS, _TRANSFORMERS_PREFIXES),
            (DEEPSEEK, _DEEPSEEK_PREFIXES),
        )
        if any(k.startswith(prefixes) for k in keys)
    }
    if len(found) != 1:
        sample = ", ".join(repr(k) for k in keys[:3])
        raise CheckpointError(
            f"{where}: unknown format, the keys (e.g. {sample}) are neither all transformers "
            f"Janus keys (model.*, lm_head.*) nor all DeepSeek Janus keys (language_model.*, ...)"
        )
    by_keys = found.pop()
    by_config = MODEL_TYPES.get(model_type, by_keys)
    if by_config != by_keys:
        raise CheckpointError(
            f"{where}: config.json says model_type {model_type!r} ({by_config} format), "
            f"but the keys are in the {by_keys} format"
        )
    if requested not in ("auto", by_keys):
        raise CheckpointError(
            f"{where}: format {requested} was requested, but the keys are in the {by_keys} format"
        )
    return by_keys


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a Hugging Face checkpoint: no {CONFIG_FILE}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return config


def _weight_files(directory: Path) -> list[Path]:
    for index_name, single_name in WEIGHT_FILES:
        index = directory / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: not a weight index ({e!r})") from e
            files = [directory / name for name in dict.fromkeys(weight_map.values())]
            for file in files:
                if not file.is_file():
                    raise CheckpointError(f"{index} lists {file.name}, which does not exist")
            return files
        if (directory / single_name).is_file():
            return [directory / single_name]
    expected = ", ".join(name for pair in WEIGHT_FILES for name in pair)
    raise CheckpointError(f"{directory} is not a Hugging Face checkpoint: none of {expected}")


def _read_headers(directory: Path) -> dict[str, TensorInfo]:
    tensors: dict[str, TensorInfo] = {}
    for file in _weight_files(directory):
        infos = _safetensors_header(file) if file.suffix == ".safetensors" else _torch_header(file)
        for key, info in infos.items():
            if key in tensors:
                raise CheckpointError(
                    f"tensor {key!r} is stored twice: {tensors[key].file.name}, {file.name}"
                )
            tensors[key] = info
    return tensors


# -- safetensors ---------------------------------------------------------------------------------


def _safetensors_header(file: Path) -> dict[str, TensorInfo]:
    """Every tensor of a safetensors file, in key order, from its header (``safe_open``).

    ``safe_open`` checks that the entries tile the data section exactly, in offset order, so a
    tensor's byte range is the running sum of the sizes before it, counted back from the end of
    the file.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(file, framework="numpy") as f:
            infos = [(key, f.get_slice(key)) for key in f.offset_keys()]
            entries = [(key, tuple(s.get_shape()), s.get_dtype()) for key, s in infos]
    except SafetensorError as e:
        raise CheckpointError(f"{file}: {_safetensors_problem(str(e))} ({e})") from e
    sizes = [math.prod(shape) * _itemsize(file, key, dtype) for key, shape, dtype in entries]
    start = file.stat().st_size - sum(sizes)
    out = {}
    for (key, shape, dtype), size in zip(entries, sizes, strict=True):
        out[key] = TensorInfo(file, shape, dtype, start, start + size)
        start += size
    return out


def _safetensors_problem(message: str) -> str:
    """What a ``SafetensorError`` means for a user."""
    if "not fully covered" in message:
        return "truncated, or followed by extra bytes: its header does not cover the file"
    if "header too small" in message or "header too large" in message:
        return "not a safetensors file (no valid header length)"
    return "not a valid safetensors file (malformed header)"


_ITEMSIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2}
_ITEMSIZES |= {"F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def _itemsize(file: Path, key: str, dtype: str) -> int:
    if dtype not in _ITEMSIZES:
        raise CheckpointError(f"{file}: tensor {key!r} has unknown dtype {dtype}")
    return _ITEMSIZES[dtype]


def _read_exactly(f, offset: int, out: np.ndarray, what: str) -> None:
    """Fills ``out`` with the bytes at ``offset`` of the unbuffered file ``f``."""
    view = memoryview(out.reshape(-1).view(np.uint8))
    f.seek(offset)
    done = 0
    while done < len(view):  # one read() returns at most ~2 GiB on Linux
        n = f.readinto(view[done:])
        if not n:
            raise CheckpointError(f"{what}: file ends early (truncated?)")
        done += n


# -- torch pickles ------------------------------------------------------------------------------


_ZIP_MAGIC = b"PK\x03\x04"


def _torch_load(file: Path) -> dict[str, Any]:
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(
            f"{file}: reading .bin checkpoints needs PyTorch (pip install torch)"
        ) from e
    with open(file, "rb") as f:
        magic = f.read(4)
    if magic != _ZIP_MAGIC:
        if magic[:1] == b"\x80":  # a pickle: torch.save's legacy format
            raise CheckpointError(
                f"{file}: legacy (non-zip) torch format, which cannot be memory-mapped; "
                f"re-save it with torch.save or convert it to safetensors"
            )
        raise CheckpointError(f"{file}: not a torch checkpoint (no zip or pickle header)")
    if not zipfile.is_zipfile(file):
        raise CheckpointError(
            f"{file}: truncated or corrupt torch checkpoint (a zip file without its central "
            f"directory, which is written last)"
        )
    try:
        state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{file}: unreadable torch checkpoint ({e})") from e
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{file}: expected a flat state dict of tensors")
    return state


_TORCH_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32", "float64": "F64"}


def _torch_dtype_name(tensor: Any) -> str:
    name = str(tensor.dtype).removeprefix("torch.")
    return _TORCH_DTYPES.get(name, name)


def _torch_header(file: Path) -> dict[str, TensorInfo]:
    # Memory-mapped: building the tensors reads no data.
    return {
        key: TensorInfo(file, tuple(t.shape), _torch_dtype_name(t))
        for key, t in _torch_load(file).items()
    }


def _iter_torch(file: Path, keys: list[str]) -> Iterator[tuple[str, np.ndarray]]:
    import torch

    state = _torch_load(file)
    for key in keys:
        tensor = state[key]
        if tensor.dtype == torch.bfloat16:  # numpy has no bf16: reinterpret the bits
            value = tensor.view(torch.int16).numpy().view(DTYPES["BF16"])
        else:
            value = tensor.numpy()
        yield key, value
        _release_pages(tensor)


def _release_pages(tensor: Any) -> None:
    """Drops the consumed tensor's pages from this process's memory map (Linux).

    The map is a clean, read-only view of the file, so the kernel can always re-read a page;
    without this every page read stays in the resident set until the whole file is closed.
    """
    if not hasattr(mmap, "MADV_DONTNEED") or tensor.nbytes == 0:
        return
    page = mmap.PAGESIZE
    start = tensor.data_ptr() // page * page
    end = math.ceil((tensor.data_ptr() + tensor.nbytes) / page) * page
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), mmap.MADV_DONTNEED)
