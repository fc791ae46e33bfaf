"""Image features for pairing: L2-normalised, computed in JAX, batched, jitted, on a mesh.

Two image towers are built in, each restored alone from its directory (Orbax partial restore: the
rest of the checkpoint is never read):

- ``Encoder.SIGLIP`` (the default): the SigLIP vision tower of a Janus model directory, with the
  Janus image preprocessing (``data/images.py``); the feature is the mean over the patch features
  of the last block, after the final LayerNorm.
- ``Encoder.CLIP``: the image tower of an HPS reward directory (``pairuni convert hpsv2``), with
  hpsv2's preprocessing done on the host (long side to the tower's size with PIL bicubic, zero
  padding to a square, OpenAI mean/std); the feature is the projected CLS embedding.

Features from any other encoder (the paper's ResNet-50, say) come in as ``.npy`` arrays, one row
per record (``load_feature_file``, ``invalid_rows``, ``normalize_rows``).

Images are decoded on host threads a few batches ahead of the device; the batch is sharded over
the mesh's batch axes (``data``, ``fsdp``) and the tower's params by the project's logical rules.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from PIL import Image
from tqdm import tqdm

from pairuni_jax import sharding
from pairuni_jax.checkpoint import convert, model_dir
from pairuni_jax.data import images
from pairuni_jax.models.clip import VisionTower
from pairuni_jax.models.siglip import SiglipVisionModel
from pairuni_jax.models.stack import RematPolicy
from pairuni_jax.pairing.encoders import Encoder
from pairuni_jax.pairing.inputs import PairingError
from pairuni_jax.rewards.hps import l2_normalize, read_reward_config
from pairuni_jax.rewards.preprocess import OPENAI_MEAN, OPENAI_STD

NORMALIZE_ROWS = 8192  # rows per device call when normalising or checking precomputed features


class ImageDecodeError(ValueError):
    """An image that passed the up-front check failed to decode; ``index`` is its position."""

    def __init__(self, index: int, path: Path, cause: Exception):
        self.index, self.path = index, path
        super().__init__(f"cannot decode {path}: {type(cause).__name__}: {cause}")


@dataclasses.dataclass(frozen=True)
class FeatureExtractor:
    """A restored image tower: host preprocessing and a jitted batch-to-features function.

    preprocess: image path -> float32[S, S, 3], S = ``image_size``.
    embed: float32[B, S, S, 3] (B a multiple of ``batch_shards``) -> float32[B, dim], unit rows,
      sharded over the batch axes of ``mesh``.
    identity: what the features depend on (encoder, directory, its config, dtype): the cache key.
    """

    identity: str
    image_size: int
    dim: int
    preprocess: Callable[[Path], np.ndarray]
    embed: Callable[[np.ndarray], jax.Array]
    mesh: Mesh

    @property
    def batch_shards(self) -> int:
        spec = sharding.logical_to_spec(("batch",))[0]
        axes = (spec,) if isinstance(spec, str) else tuple(spec or ())
        return math.prod(self.mesh.shape[a] for a in axes)


def siglip_extractor(
    directory: str | Path, mesh: Mesh, dtype: Any = jnp.float32
) -> FeatureExtractor:
    """The SigLIP vision tower of the Janus model directory ``directory``, mean-pooled."""
    config, stored = convert.read_model_config(directory)

    def factory() -> SiglipVisionModel:
        return SiglipVisionModel(config.vision, dtype=dtype, param_dtype=stored, rngs=nnx.Rngs(0))

    tower = _restore_tower(directory, "vision_model", factory, mesh)
    return siglip_tower_extractor(tower, mesh, dtype, _identity(Encoder.SIGLIP, directory, dtype))


def siglip_tower_extractor(
    tower: SiglipVisionModel, mesh: Mesh, dtype: Any = jnp.float32, identity: str = "siglip"
) -> FeatureExtractor:
    """Features of a SigLIP tower on ``mesh``: its patch features averaged, then unit norm."""
    vision = tower.config

    def features(tower: SiglipVisionModel, pixels: jax.Array) -> jax.Array:
        return jnp.mean(tower(pixels.astype(dtype)).astype(jnp.float32), axis=1)

    return FeatureExtractor(
        identity=identity,
        image_size=vision.image_size,
        dim=vision.hidden_size,
        preprocess=lambda path: images.load_and_preprocess(path, vision.image_size),
        embed=_jit_embed(tower, features, mesh),
        mesh=mesh,
    )


def clip_extractor(directory: str | Path, mesh: Mesh, dtype: Any = jnp.float32) -> FeatureExtractor:
    """The CLIP image tower of the HPS reward directory ``directory`` (projected CLS token)."""
    config = read_reward_config(directory)

    def factory() -> VisionTower:
        return VisionTower(
            config.vision,
            config.embed_dim,
            dtype=dtype,
            param_dtype=jnp.float32,
            remat=RematPolicy.NONE,
            rngs=nnx.Rngs(0),
        )

    tower = _restore_tower(directory, "visual", factory, mesh)
    identity = _identity(Encoder.CLIP, directory, dtype)
    return clip_tower_extractor(tower, config.vision.image_size, config.embed_dim, mesh, identity)


def clip_tower_extractor(
    tower: VisionTower, image_size: int, dim: int, mesh: Mesh, identity: str = "clip"
) -> FeatureExtractor:
    """Features of a CLIP image tower on ``mesh``: the projected CLS token, unit norm."""
    return FeatureExtractor(
        identity=identity,
        image_size=image_size,
        dim=dim,
        preprocess=lambda path: clip_preprocess(images.load_image(path), image_size),
        embed=_jit_embed(tower, lambda t, pixels: t(pixels), mesh),
        mesh=mesh,
    )


def clip_preprocess(image: Image.Image, image_size: int) -> np.ndarray:
    """hpsv2's ``preprocess_val`` on the host: long side to ``image_size`` (PIL bicubic, which
    antialiases), centred zero padding to a square in [0, 1], OpenAI mean/std.
    Returns float32[S, S, 3]."""
    width, height = image.size
    scale = image_size / max(width, height)
    if scale != 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    x = np.asarray(image.convert("RGB"), np.float32) / np.float32(255.0)
    pad_h, pad_w = image_size - x.shape[0], image_size - x.shape[1]
    x = np.pad(x, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    return (x - np.asarray(OPENAI_MEAN, np.float32)) / np.asarray(OPENAI_STD, np.float32)


def extract_features(
    extractor: FeatureExtractor,
    paths: Sequence[Path],
    *,
    batch_size: int = 32,
    threads: int = 8,
    desc: str = "features",
    progress: bool = True,
) -> np.ndarray:
    """Features of the images at ``paths``, in order: float32[N, dim], unit rows.

    batch_size is rounded up to a multiple of the batch shards; the last batch is zero-padded so
    every call has one shape (one compilation). Raises ``ImageDecodeError`` for an image that
    fails to decode.
    """
    shards = extractor.batch_shards
    batch = -(-max(batch_size, 1) // shards) * shards
    out = np.empty((len(paths), extractor.dim), np.float32)
    in_flight: collections.deque[tuple[int, int, jax.Array]] = collections.deque()

    def drain(bar: tqdm) -> None:
        start, count, result = in_flight.popleft()
        out[start : start + count] = np.asarray(result)[:count]
        bar.update(count)

    with (
        ThreadPoolExecutor(threads) as pool,
        tqdm(total=len(paths), unit="img", desc=desc, disable=not progress) as bar,
    ):
        for start, pixels in _decoded_batches(pool, extractor.preprocess, paths, batch):
            count = len(pixels)
            if count < batch:
                pixels = np.concatenate(
                    [pixels, np.zeros((batch - count, *pixels.shape[1:]), pixels.dtype)]
                )
            in_flight.append((start, count, extractor.embed(pixels)))  # dispatched asynchronously
            if len(in_flight) > 1:
                drain(bar)
        while in_flight:
            drain(bar)
    return out


def load_feature_file(path: str | Path, *, rows: int, source: Path) -> np.ndarray:
    """A precomputed features file: float[rows, D] (memory-mapped), one row per record of
    ``source`` in file order. Raises ``PairingError`` for another shape or a non-float dtype."""
    try:
        features = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise PairingError(f"{path}: cannot read a .npy array ({e})") from e
    if features.ndim != 2 or features.shape[1] < 1:
        raise PairingError(
            f"{path}: expected a 2-d array [records, width], got shape {features.shape}"
        )
    if not np.issubdtype(features.dtype, np.floating):
        raise PairingError(f"{path}: expected floating-point features, got dtype {features.dtype}")
    if features.shape[0] != rows:
        raise PairingError(
            f"{path}: {features.shape[0]} rows, but {source} has {rows} records (one row per "
            "non-blank line, in file order)"
        )
    return features


def invalid_rows(features: np.ndarray) -> dict[int, str]:
    """Rows that cannot be normalised: {row: reason} for non-finite values and all-zero rows."""
    problems: dict[int, str] = {}
    for start in range(0, len(features), NORMALIZE_ROWS):
        block = np.asarray(features[start : start + NORMALIZE_ROWS], np.float32)
        finite = np.isfinite(block).all(axis=1)
        zero = finite & ~block.any(axis=1)
        for row in np.flatnonzero(~finite):
            problems[start + int(row)] = "has a non-finite value (NaN or inf)"
        for row in np.flatnonzero(zero):
            problems[start + int(row)] = "is all zeros (no direction to normalise)"
    return problems


def normalize_rows(features: np.ndarray) -> np.ndarray:
    """float[N, D] -> float32[N, D] with unit rows, computed in JAX in blocks of rows."""
    normalize = jax.jit(l2_normalize)
    out = np.empty(features.shape, np.float32)
    for start in range(0, len(features), NORMALIZE_ROWS):
        block = np.asarray(features[start : start + NORMALIZE_ROWS], np.float32)
        out[start : start + len(block)] = np.asarray(normalize(block))
    return out


def cache_key(extractor: FeatureExtractor, paths: Sequence[Path]) -> str:
    """A digest of the extractor and of every image (path, size, modification time)."""
    digest = hashlib.sha256(extractor.identity.encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"\0{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _identity(encoder: Encoder, directory: str | Path, dtype: Any) -> str:
    config = (Path(directory) / model_dir.CONFIG_FILE).read_bytes()
    config_hash = hashlib.sha256(config).hexdigest()
    return f"{encoder}:{Path(directory).absolute()}:{config_hash}:{jnp.dtype(dtype).name}"


def _restore_tower(
    directory: str | Path, key: str, factory: Callable[[], nnx.Module], mesh: Mesh
) -> nnx.Module:
    """Restores the subtree ``key`` of a model directory's params into ``factory()``'s module,
    sharded on ``mesh`` by the logical rules; nothing else of the checkpoint is read."""
    graphdef, state = nnx.split(nnx.eval_shape(factory))
    shardings = nnx.to_pure_dict(sharding.state_shardings(state, mesh))
    target = {key: model_dir.abstract_like(nnx.to_pure_dict(state), shardings)}
    nnx.replace_by_pure_dict(state, model_dir.restore_params(directory, target, partial=True)[key])
    return nnx.merge(graphdef, state)


def _jit_embed(
    tower: nnx.Module, features: Callable[[Any, jax.Array], jax.Array], mesh: Mesh
) -> Callable[[np.ndarray], jax.Array]:
    graphdef, state = nnx.split(tower)
    batch_sharding = NamedSharding(mesh, sharding.logical_to_spec(("batch",)))

    @jax.jit
    def run(state: nnx.State, pixels: jax.Array) -> jax.Array:
        return l2_normalize(features(nnx.merge(graphdef, state), pixels))

    def embed(pixels: np.ndarray) -> jax.Array:
        with jax.set_mesh(mesh):
            return run(state, jax.device_put(pixels, batch_sharding))

    return embed


def _decoded_batches(
    pool: ThreadPoolExecutor,
    preprocess: Callable[[Path], np.ndarray],
    paths: Sequence[Path],
    batch: int,
    ahead: int = 2,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yields (start, float32[b, S, S, 3]) batches, decoding up to ``ahead`` batches in advance."""
    pending: collections.deque[tuple[int, list[Future]]] = collections.deque()

    def finish() -> tuple[int, np.ndarray]:
        start, futures = pending.popleft()
        decoded = []
        for offset, future in enumerate(futures):
            try:
                decoded.append(future.result())
            except Exception as e:  # PIL raises many types for corrupt data
                raise ImageDecodeError(start + offset, paths[start + offset], e) from e
        return start, np.stack(decoded)

    for start in range(0, len(paths), batch):
        pending.append((start, [pool.submit(preprocess, p) for p in paths[start : start + batch]]))
        if len(pending) > ahead:
            yield finish()
    while pending:
        yield finish()
