"""Retrieved pairs (PairUni Alg. 1, part 2): exact cosine neighbours and greedy one-use matching.

``nearest_neighbours`` finds, for every query (generation record), its ``top_n`` most similar
keys (understanding records) with cosine >= ``threshold``, exactly: blocked matmuls on the
device, a block of query rows (sharded over every mesh device) against the keys in tiles inside
one ``lax.scan``, a running top-n per row. Device memory is the keys plus one block × tile of
similarities, whatever the number of queries; the host holds only the [Q, top_n] results.

``greedy_match`` then walks all those candidate edges in order of decreasing similarity (ties:
lower query, then lower key index) and accepts an edge when neither end is used yet. So each
record is used at most once, and ``top_n`` is how many fallbacks a query has when its nearest
keys were taken by more similar queries (Alg. 1 adds all top-n matches of one query, which
contradicts "each image is used at most once"; this is the one-use reading).
"""

from __future__ import annotations

import collections
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from pairuni_jax import sharding

QUERY_BLOCK = 4096  # query rows per device call
KEY_TILE = 8192  # keys per scan step


@dataclasses.dataclass(frozen=True)
class Neighbours:
    """Per query, its best keys: ``keys`` int64[Q, n] and ``similarities`` float32[Q, n],
    best first; a slot without a key at or above the threshold has key -1 and similarity -inf."""

    keys: np.ndarray
    similarities: np.ndarray


@dataclasses.dataclass(frozen=True)
class Matches:
    """Accepted pairs in acceptance order (decreasing similarity): query and key row indices
    int64[M] and their cosine float32[M]."""

    queries: np.ndarray
    keys: np.ndarray
    similarities: np.ndarray

    def __len__(self) -> int:
        return len(self.queries)


def nearest_neighbours(
    queries: np.ndarray,
    keys: np.ndarray,
    *,
    top_n: int = 1,
    threshold: float = 0.6,
    mesh: Mesh | None = None,
    query_block: int = QUERY_BLOCK,
    key_tile: int = KEY_TILE,
    progress: bool = True,
) -> Neighbours:
    """Exact top-``top_n`` keys by cosine for each query, keeping only cosine >= ``threshold``.

    queries float[Q, D] and keys float[K, D] are unit rows (``features.normalize_rows``); the
    cosine is their fp32 inner product at full matmul precision. mesh: where to compute (default:
    all devices); query rows are split over all its devices.
    """
    if queries.shape[1] != keys.shape[1]:
        raise ValueError(f"feature widths differ: queries {queries.shape}, keys {keys.shape}")
    if top_n < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n}")
    mesh = mesh if mesh is not None else sharding.make_mesh(sharding.MeshConfig())
    n = min(top_n, len(keys))
    tile = min(key_tile, len(keys))
    tiles = -(-len(keys) // tile)
    padded = np.zeros((tiles * tile, keys.shape[1]), np.float32)
    padded[: len(keys)] = keys
    replicated = NamedSharding(mesh, PartitionSpec())
    key_tiles = jax.device_put(padded.reshape(tiles, tile, -1), replicated)
    del padded
    valid = jax.device_put((np.arange(tiles * tile) < len(keys)).reshape(tiles, tile), replicated)
    devices = mesh.devices.size
    block = min(-(-query_block // devices), -(-len(queries) // devices)) * devices
    rows = NamedSharding(mesh, PartitionSpec(tuple(sharding.MESH_AXES)))  # rows over all devices
    threshold_f32 = jnp.float32(threshold)

    best_keys = np.full((len(queries), n), -1, np.int64)
    best_sims = np.full((len(queries), n), -np.inf, np.float32)
    in_flight: collections.deque = collections.deque()

    def drain(bar: tqdm) -> None:
        start, count, (sims, idx) = in_flight.popleft()
        sims, idx = np.asarray(sims)[:count], np.asarray(idx)[:count]
        found = np.isfinite(sims)
        best_sims[start : start + count] = np.where(found, sims, -np.inf)
        best_keys[start : start + count] = np.where(found, idx, -1)
        bar.update(count)

    with (
        jax.set_mesh(mesh),
        tqdm(total=len(queries), unit="query", desc="matching", disable=not progress) as bar,
    ):
        for start in range(0, len(queries), block):
            chunk = np.zeros((block, queries.shape[1]), np.float32)
            count = min(block, len(queries) - start)
            chunk[:count] = queries[start : start + count]
            result = _block_top_n(
                jax.device_put(chunk, rows), key_tiles, valid, threshold_f32, top_n=n
            )
            in_flight.append((start, count, result))
            if len(in_flight) > 1:
                drain(bar)
        while in_flight:
            drain(bar)
    return Neighbours(keys=best_keys, similarities=best_sims)


@functools.partial(jax.jit, static_argnames=("top_n",))
def _block_top_n(
    queries: jax.Array, key_tiles: jax.Array, valid: jax.Array, threshold: jax.Array, *, top_n: int
) -> tuple[jax.Array, jax.Array]:
    """queries float32[B, D], key_tiles float32[T, K, D], valid bool[T, K] ->
    (similarities float32[B, n], key indices int32[B, n]); -inf where below the threshold."""
    tile = key_tiles.shape[1]

    def step(carry, inputs):
        best_sims, best_idx = carry
        keys, keep, offset = inputs
        sims = jnp.dot(
            queries, keys.T, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32
        )
        sims = jnp.where(keep[None] & (sims >= threshold), sims, -jnp.inf)
        tile_sims, tile_idx = jax.lax.top_k(sims, top_n)
        # Earlier tiles come first, so equal similarities resolve to the lower key index.
        all_sims = jnp.concatenate([best_sims, tile_sims], axis=1)
        all_idx = jnp.concatenate([best_idx, tile_idx + offset], axis=1)
        new_sims, pos = jax.lax.top_k(all_sims, top_n)
        return (new_sims, jnp.take_along_axis(all_idx, pos, axis=1)), None

    init = (
        jnp.full((queries.shape[0], top_n), -jnp.inf, jnp.float32),
        jnp.zeros((queries.shape[0], top_n), jnp.int32),
    )
    offsets = jnp.arange(key_tiles.shape[0], dtype=jnp.int32) * tile
    (sims, idx), _ = jax.lax.scan(step, init, (key_tiles, valid, offsets))
    return sims, idx


def greedy_match(neighbours: Neighbours) -> Matches:
    """One-use greedy matching over the candidate edges, in order of decreasing similarity."""
    query_idx, slot = np.nonzero(neighbours.keys >= 0)
    key_idx = neighbours.keys[query_idx, slot]
    sims = neighbours.similarities[query_idx, slot]
    order = np.lexsort((key_idx, query_idx, -sims.astype(np.float64)))
    used_queries, used_keys = set(), set()
    accepted = []
    for e in order:
        q, k = int(query_idx[e]), int(key_idx[e])
        if q not in used_queries and k not in used_keys:
            used_queries.add(q)
            used_keys.add(k)
            accepted.append(e)
    accepted = np.asarray(accepted, np.int64)
    return Matches(
        queries=query_idx[accepted].astype(np.int64),
        keys=key_idx[accepted].astype(np.int64),
        similarities=sims[accepted].astype(np.float32),
    )


def retrieve_pairs(
    queries: np.ndarray,
    keys: np.ndarray,
    *,
    top_n: int = 1,
    threshold: float = 0.6,
    mesh: Mesh | None = None,
    progress: bool = True,
) -> Matches:
    """``greedy_match(nearest_neighbours(...))``: the retrieved pairs between unit features."""
    if len(queries) == 0 or len(keys) == 0:
        empty = np.zeros(0, np.int64)
        return Matches(empty, empty, np.zeros(0, np.float32))
    neighbours = nearest_neighbours(
        queries, keys, top_n=top_n, threshold=threshold, mesh=mesh, progress=progress
    )
    return greedy_match(neighbours)
