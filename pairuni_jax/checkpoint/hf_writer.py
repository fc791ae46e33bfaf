"""Streaming writer of (sharded) safetensors checkpoints with a Hugging Face weight index.

Tensors are produced one at a time by callables and written straight to disk: the header of a
shard is computed from the declared shapes first, then each tensor's bytes follow, so no shard is
ever assembled in memory. Which tensor goes to which file is huggingface_hub's split (the one
``save_pretrained`` uses), planned from the declared sizes. The layout is the safetensors format
(8-byte little-endian header length, a JSON header padded to 8 bytes, then the data) that
``safetensors`` and transformers read.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from huggingface_hub import StateDictSplit, split_state_dict_into_shards_factory
from huggingface_hub.serialization._base import parse_size_to_int
from tqdm import tqdm

from pairuni_jax.checkpoint import janus_mapping

SAFETENSORS_NAMES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
FILENAME_PATTERN = "model{suffix}.safetensors"  # model.safetensors, model-00001-of-00002...
INDEX_FILE = "model.safetensors.index.json"


@dataclasses.dataclass(frozen=True)
class OutTensor:
    """A tensor to write: its key, shape and dtype, and a callable that produces the array."""

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    produce: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def parse_size(size: int | str) -> int:
    """Bytes from an int or ``5GB`` / ``500MB`` / ``1.5TB`` (decimal units, huggingface_hub's
    ``parse_size_to_int``, as ``save_pretrained`` reads ``max_shard_size``)."""
    value = size if isinstance(size, int) else parse_size_to_int(size)
    if value <= 0:
        raise ValueError(f"invalid size {size!r}: must be positive")
    return value


def plan_shards(tensors: Sequence[OutTensor], max_shard_size: int) -> StateDictSplit:
    """Which file each tensor goes to, from the declared sizes alone (no tensor is produced):
    huggingface_hub's split, so shard names and the index match ``save_pretrained``'s."""
    return split_state_dict_into_shards_factory(
        {t.key: t for t in tensors},
        get_storage_size=lambda t: t.nbytes,
        filename_pattern=FILENAME_PATTERN,
        max_shard_size=max_shard_size,
    )


def write_safetensors(
    path: Path, tensors: Sequence[OutTensor], progress: tqdm | None = None
) -> None:
    """Writes one safetensors file, producing and writing one tensor at a time."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in tensors:
        if t.dtype.name not in SAFETENSORS_NAMES:
            raise ValueError(f"{t.key}: unsupported dtype {t.dtype} for safetensors output")
        header[t.key] = {
            "dtype": SAFETENSORS_NAMES[t.dtype.name],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for t in tensors:
            value = t.produce()
            if value.shape != t.shape:
                raise ValueError(f"{t.key}: produced shape {value.shape}, declared {t.shape}")
            if value.dtype != t.dtype or not value.flags.c_contiguous:
                out = np.empty(t.shape, t.dtype)
                janus_mapping.copy_into(out, value)
                value = out
            value.reshape(-1).view(np.uint8).tofile(f)
            if progress is not None:
                progress.update()


def write_checkpoint(
    directory: Path, tensors: Sequence[OutTensor], max_shard_size: int, progress: bool = True
) -> list[Path]:
    """Writes ``model.safetensors``, or ``model-0000i-of-0000n.safetensors`` shards plus
    ``model.safetensors.index.json`` when the tensors exceed ``max_shard_size`` bytes."""
    split = plan_shards(tensors, max_shard_size)
    by_key = {t.key: t for t in tensors}
    with tqdm(total=len(tensors), unit="tensor", desc="writing", disable=not progress) as bar:
        for name, keys in split.filename_to_tensors.items():
            write_safetensors(directory / name, [by_key[k] for k in keys], bar)
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return [directory / name for name in split.filename_to_tensors]
