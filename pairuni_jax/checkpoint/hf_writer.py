"""Streaming writer of (sharded) safetensors checkpoints with a Hugging Face weight index.

Tensors are produced one at a time by callables and written straight to disk: the header of a
shard is computed from the declared shapes first, then each tensor's bytes follow, so no shard is
ever assembled in memory. The layout is the safetensors format (8-byte little-endian header
length, a JSON header padded to 8 bytes, then the data) that ``safetensors`` and transformers read.
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pairuni_jax.checkpoint import janus_mapping

SAFETENSORS_NAMES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
}


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
    """Bytes from ``5GB`` / ``500MB`` / ``2GiB`` / ``1000`` (decimal units, as transformers)."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]I?B|B)?\s*", size.upper())
    if not m or int(m.group(1)) <= 0:
        raise ValueError(f"invalid size {size!r}: expected e.g. 5GB, 500MB, 2GiB or a byte count")
    return int(m.group(1)) * _UNITS[m.group(2) or ""]


def plan_shards(tensors: Sequence[OutTensor], max_shard_size: int) -> list[list[OutTensor]]:
    """Consecutive tensors grouped into shards of at most ``max_shard_size`` bytes each
    (a larger single tensor gets a shard of its own)."""
    shards: list[list[OutTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


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
    shards = plan_shards(tensors, max_shard_size)
    n = len(shards)
    names = (
        [SINGLE_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    )
    with tqdm(total=len(tensors), unit="tensor", desc="writing", disable=not progress) as bar:
        for name, shard in zip(names, shards, strict=True):
            write_safetensors(directory / name, shard, bar)
    if n > 1:
        index = {
            "metadata": {"total_size": sum(t.nbytes for t in tensors)},
            "weight_map": {
                t.key: name for name, shard in zip(names, shards, strict=True) for t in shard
            },
        }
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return [directory / name for name in names]
