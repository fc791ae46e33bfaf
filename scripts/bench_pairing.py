"""Benchmarks of ``pairuni data pair``: the retrieval at PairUG's source sizes, k-means selection,
and image-feature throughput of the SigLIP towers.

    nice -n 10 python scripts/bench_pairing.py                  # everything
    nice -n 10 python scripts/bench_pairing.py --only matching  # 60,000 x 47,000 x 2,048
    python scripts/bench_pairing.py --only features --images 8

matching: synthetic clustered unit features (cosines within a cluster around 0.65, so that the
threshold keeps many candidates) for 60,000 generation and 47,000 understanding records at
ResNet-50's width 2,048; times the normalisation, the exact blocked top-1 search and the greedy
matching, and reports the matmul's GFLOP/s and the process's peak memory (targets: < 180 s,
< 4 GiB). kmeans: MiniBatchKMeans medoids on N candidates. features: random-weight SigLIP towers
(the tiny test tower and Janus-Pro's SigLIP-L/16 at 384 px, 1B and 7B alike) on this machine's devices; host
decoding and the tower are timed separately. The machine's load average is printed with every
section: other jobs share this CPU.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from pairuni_jax import sharding
from pairuni_jax.models.siglip import SiglipConfig, SiglipVisionModel
from pairuni_jax.pairing import features, matching, selection


def _load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB


def clustered(n: int, centres: np.ndarray, spread: float, rng: np.random.Generator) -> np.ndarray:
    """float32[n, D]: a random centre each plus Gaussian noise of total norm ~``spread``."""
    out = np.empty((n, centres.shape[1]), np.float32)
    sigma = np.float32(spread / np.sqrt(centres.shape[1]))
    for start in range(0, n, 8192):
        count = min(8192, n - start)
        which = rng.integers(0, len(centres), count)
        noise = rng.standard_normal((count, centres.shape[1]), dtype=np.float32) * sigma
        out[start : start + count] = centres[which] + noise
    return out


def bench_matching(num_gen: int, num_und: int, dim: int, threshold: float, top_n: int) -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((num_und // 20, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    gen, und = clustered(num_gen, centres, 0.75, rng), clustered(num_und, centres, 0.75, rng)
    print(f"matching {num_gen} x {num_und} x {dim}, top-{top_n}, threshold {threshold} ({_load()})")
    start = time.perf_counter()
    gen, und = features.normalize_rows(gen), features.normalize_rows(und)
    normalised = time.perf_counter()
    mesh = sharding.make_mesh(sharding.MeshConfig())
    neighbours = matching.nearest_neighbours(gen, und, top_n=top_n, threshold=threshold, mesh=mesh)
    searched = time.perf_counter()
    matches = matching.greedy_match(neighbours)
    matched = time.perf_counter()
    flop = 2.0 * num_gen * num_und * dim
    search = searched - normalised
    print(f"  normalise: {normalised - start:.1f} s")
    print(
        f"  exact search: {search:.1f} s ({flop / search / 1e9:.0f} GFLOP/s of the {flop:.2e} FLOP matmul)"
    )
    print(f"  greedy matching: {matched - searched:.2f} s")
    print(
        f"  total: {matched - start:.1f} s (target < 180 s); peak memory {_peak_gib():.2f} GiB (target < 4)"
    )
    found = np.isfinite(neighbours.similarities[:, 0]).sum()
    print(
        f"  {found} generation records with a candidate >= {threshold}, {len(matches)} pairs; {_load()}"
    )


def bench_kmeans(num: int, dim: int, clusters: int) -> None:
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    feats = features.normalize_rows(clustered(num, centres, 0.75, rng))
    print(f"kmeans medoids: {num} x {dim}, K = {clusters} ({_load()})")
    start = time.perf_counter()
    chosen = selection.kmeans_medoids(feats, clusters, seed=0)
    print(f"  {time.perf_counter() - start:.1f} s, {len(chosen)} medoids; {_load()}")


def bench_features(name: str, config: SiglipConfig, num_images: int, batch: int) -> None:
    mesh = sharding.make_mesh(sharding.MeshConfig())
    tower = sharding.create_sharded(lambda: SiglipVisionModel(config, rngs=nnx.Rngs(0)), mesh)
    extractor = features.siglip_tower_extractor(tower, mesh, jnp.float32)
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        paths = []
        for i in range(num_images):
            path = Path(tmp) / f"{i}.jpg"
            Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(path)
            paths.append(path)
        start = time.perf_counter()
        for path in paths:
            extractor.preprocess(path)
        decode = num_images / (time.perf_counter() - start)
        pixels = np.stack([extractor.preprocess(p) for p in paths[:batch]])
        jax.block_until_ready(extractor.embed(pixels))  # compile
        start = time.perf_counter()
        rounds = max(1, num_images // batch)
        for _ in range(rounds):
            jax.block_until_ready(extractor.embed(pixels))
        tower_rate = rounds * batch / (time.perf_counter() - start)
        start = time.perf_counter()
        features.extract_features(extractor, paths, batch_size=batch, progress=False)
        overall = num_images / (time.perf_counter() - start)
    print(
        f"features {name} ({config.image_size} px, width {config.hidden_size}, {config.num_layers} "
        f"layers, batch {batch}, fp32): tower {tower_rate:.3g} images/s, host decode of 640x480 JPEGs "
        f"{decode:.3g} images/s (1 thread), extract_features {overall:.3g} images/s; {_load()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["matching", "kmeans", "features"])
    parser.add_argument("--gen", type=int, default=60_000)
    parser.add_argument("--und", type=int, default=47_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--threshold", type=float, default=0.6)
    parser.add_argument("--top-n", type=int, default=1)
    parser.add_argument("--kmeans-n", type=int, default=20_000)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--images", type=int, default=8, help="images per feature benchmark")
    args = parser.parse_args()
    print(f"devices: {jax.devices()}")
    if args.only in (None, "matching"):
        bench_matching(args.gen, args.und, args.dim, args.threshold, args.top_n)
    if args.only in (None, "kmeans"):
        bench_kmeans(args.kmeans_n, args.dim, args.clusters)
    if args.only in (None, "features"):
        tiny = SiglipConfig.tiny()
        bench_features("tiny", tiny, max(args.images, 64), 32)
        bench_features(
            "Janus-Pro SigLIP-L/16", SiglipConfig.siglip_large_patch16_384(), args.images, 4
        )


if __name__ == "__main__":
    main()
