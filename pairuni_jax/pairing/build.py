"""``build_pairs``: PairUni Alg. 1 from two input files to a PairUG JSONL file.

1. Read and check both inputs (``inputs.read_halves``) and the destinations, before any work.
2. Unit image features per record: computed by an image tower (``features``) or precomputed
   ``.npy`` files; optionally cached next to the output (``OUT.features/``).
3. Aligned pairs among the records that carry their own completion (``selection``).
4. Retrieved pairs among the rest: exact cosine top-n, threshold, greedy one use (``matching``).
5. Write the pairs atomically, the similarity histogram PNG, and return the summary.

Output records: an aligned pair has ``"similarity": 1.0, "aligned": true`` and the record on both
sides; a retrieved pair has the cosine (rounded to 6 decimals) and the generation and understanding
records as ``generate_ann`` and ``understand_ann`` (``"aligned": false`` is written only where
``pairuni data validate``'s default rule would call the pair aligned: cosine >= 0.999). Aligned
pairs come first (understanding, then generation, in file order), then retrieved pairs in order
of decreasing similarity. Image paths are rewritten relative to the output file's directory; all
other fields of the input records are kept as they are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import jax
import jax.numpy as jnp
import numpy as np

from pairuni_jax import sharding
from pairuni_jax.data.records import ALIGNED_SIMILARITY, DataError, ErrorKind, Issue, OnError
from pairuni_jax.pairing import features as features_lib
from pairuni_jax.pairing.encoders import Encoder
from pairuni_jax.pairing.inputs import HalfRecord, HalfSet, PairingError, Side, read_halves
from pairuni_jax.pairing.matching import Matches, retrieve_pairs
from pairuni_jax.pairing.report import PairingSummary, save_histogram_png
from pairuni_jax.pairing.selection import AlignedSelection, check_selection, select_aligned

DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class PairingConfig:
    """Everything ``build_pairs`` does follows from these fields and the input files.

    understanding, generation: the input JSONL files (``inputs``); out: the pair JSONL to write.
    image_root: directory relative image paths of both inputs are resolved against (default: each
      file's own directory).
    encoder: the image tower when no precomputed features are given; model: the Janus model
      directory for ``siglip``; reward: the HPS reward directory for ``clip``.
    features_u, features_g: precomputed features (.npy, float[records, D], one row per non-blank
      line of the matching input, in file order); both or neither.
    feature_cache: keep computed features in ``OUT.features/`` and reuse them when the encoder
      and every image (path, size, modification time) are unchanged.
    aligned_selection, clusters: how aligned pairs are chosen, and K (``selection``).
    seed: seeds k-means and random selection; the output is a function of the inputs and seed.
    top_n: candidate understanding records per generation record; threshold: the cosine δ a
      retrieved pair needs (PairUni: 0.6).
    mesh: devices for features and matching. on_error: ``raise`` at the first bad record, or
      ``skip`` and count bad records. overwrite: replace existing outputs.
    batch_size: images per feature batch (rounded up to a multiple of the batch shards).
    dtype: the tower's compute dtype, ``fp32`` or ``bf16`` (None: fp32 on CPU, else bf16).
    """

    understanding: Path
    generation: Path
    out: Path
    image_root: Path | None = None
    encoder: Encoder = Encoder.SIGLIP
    model: Path | None = None
    reward: Path | None = None
    features_u: Path | None = None
    features_g: Path | None = None
    feature_cache: bool = False
    aligned_selection: AlignedSelection = AlignedSelection.KMEANS
    clusters: int | None = None
    seed: int = 0
    top_n: int = 1
    threshold: float = 0.6
    mesh: sharding.MeshConfig = sharding.MeshConfig()
    on_error: OnError = "raise"
    overwrite: bool = False
    batch_size: int = 32
    dtype: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"--threshold must be in [0, 1], got {self.threshold}")
        if self.top_n < 1:
            raise ValueError(f"--top-n must be >= 1, got {self.top_n}")
        if self.clusters is not None and self.clusters < 1:
            raise ValueError(f"--clusters must be >= 1, got {self.clusters}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"--on-error must be 'raise' or 'skip', got {self.on_error!r}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if (self.features_u is None) != (self.features_g is None):
            raise ValueError("give both --features-u and --features-g, or neither")
        if self.precomputed:
            if self.model is not None or self.reward is not None or self.feature_cache:
                raise ValueError(
                    "precomputed features (--features-u/--features-g) exclude --model, --reward "
                    "and --feature-cache"
                )
        elif self.encoder is Encoder.SIGLIP:
            if self.model is None or self.reward is not None:
                raise ValueError(
                    "the siglip encoder reads a Janus model directory: give --model DIR (or "
                    "--encoder clip --reward DIR, or --features-u/--features-g)"
                )
        elif self.reward is None or self.model is not None:
            raise ValueError("--encoder clip reads an HPS reward directory: give --reward DIR")

    @property
    def precomputed(self) -> bool:
        return self.features_u is not None

    @property
    def histogram_path(self) -> Path:
        """``pairs.jsonl`` -> ``pairs.similarity.png``."""
        return self.out.with_suffix(".similarity.png")

    @property
    def cache_dir(self) -> Path:
        """``pairs.jsonl`` -> ``pairs.features/``."""
        return self.out.with_suffix(".features")

    def options(self) -> dict[str, Any]:
        """Every field's value, for the summary."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def build_pairs(config: PairingConfig) -> PairingSummary:
    """Builds the pairs of ``config`` and writes them (see the module docstring).

    Raises ``DataError`` for a bad record (``on_error="raise"``), ``PairingError`` for input that
    cannot be paired as a whole, ``FileExistsError`` for an existing output without
    ``overwrite``, and ``ValueError`` for inconsistent options.
    """
    _check_destinations(config)
    seen: dict[Path, tuple[Path, int]] = {}
    kw = dict(image_root=config.image_root, on_error=config.on_error, seen_images=seen)
    und = read_halves(config.understanding, Side.UNDERSTANDING, **kw)
    gen = read_halves(config.generation, Side.GENERATION, **kw)
    candidates = sum(r.can_align for r in und.records) + sum(r.can_align for r in gen.records)
    check_selection(config.aligned_selection, config.clusters, candidates)
    if config.precomputed:
        und_features, gen_features = _precomputed_features(config, und, gen)
    else:
        und_features, gen_features = _computed_features(config, und, gen)

    und_candidates = np.flatnonzero([r.can_align for r in und.records])
    gen_candidates = np.flatnonzero([r.can_align for r in gen.records])
    candidate_features = np.concatenate(
        [und_features[und_candidates], gen_features[gen_candidates]]
    )
    chosen = select_aligned(
        candidate_features, config.aligned_selection, config.clusters, config.seed
    )
    del candidate_features
    und_aligned = und_candidates[chosen[chosen < len(und_candidates)]]
    gen_aligned = gen_candidates[chosen[chosen >= len(und_candidates)] - len(und_candidates)]

    und_left = np.setdiff1d(np.arange(len(und)), und_aligned)
    gen_left = np.setdiff1d(np.arange(len(gen)), gen_aligned)
    matches = retrieve_pairs(
        _rows(gen_features, gen_left),
        _rows(und_features, und_left),
        top_n=config.top_n,
        threshold=config.threshold,
        mesh=sharding.make_mesh(config.mesh),
        progress=config.progress,
    )
    matches = Matches(gen_left[matches.queries], und_left[matches.keys], matches.similarities)

    aligned = [und.records[i] for i in und_aligned] + [gen.records[i] for i in gen_aligned]
    _write_pairs(config, aligned, matches, und, gen)
    candidates = len(und_candidates) + len(gen_candidates)  # fewer if features were skipped
    summary = _summary(config, und, gen, candidates, (und_aligned, gen_aligned), matches)
    with _atomic_file(config.histogram_path, config.overwrite, binary=True) as f:
        title = f"{len(matches)} retrieved pairs ({config.out.name})"
        save_histogram_png(f, matches.similarities, config.threshold, title)
    return summary


def _check_destinations(config: PairingConfig) -> None:
    inputs = (config.understanding, config.generation, config.features_u, config.features_g)
    for path in (config.out, config.histogram_path):
        if any(p is not None and p.absolute() == path.absolute() for p in inputs):
            raise ValueError(f"{path} is one of the inputs; choose another --out")
    if config.overwrite:
        return
    for path in (config.out, config.histogram_path):
        if path.exists():
            raise FileExistsError(
                f"{path} already exists; choose another --out or pass --overwrite"
            )


def _rows(features: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return features if len(rows) == len(features) else features[rows]


# -- features -------------------------------------------------------------------------------------


def _precomputed_features(
    config: PairingConfig, und: HalfSet, gen: HalfSet
) -> tuple[np.ndarray, np.ndarray]:
    assert config.features_u is not None and config.features_g is not None
    loaded = {}
    for halves, path in ((und, config.features_u), (gen, config.features_g)):
        loaded[halves.side] = features_lib.load_feature_file(
            path, rows=halves.lines, source=halves.file
        )
    width_u, width_g = loaded[Side.UNDERSTANDING].shape[1], loaded[Side.GENERATION].shape[1]
    if width_u != width_g:
        raise PairingError(
            f"feature widths differ: {config.features_u} has {width_u} columns, "
            f"{config.features_g} has {width_g}"
        )
    out = []
    for halves, path in ((und, config.features_u), (gen, config.features_g)):
        rows = np.asarray([r.row for r in halves.records], np.int64)
        features = loaded[halves.side]
        features = features[rows] if len(rows) != len(features) else features
        out.append(_drop_invalid(config, halves, features, lambda r, p=path: f"row {r.row} of {p}"))
    return out[0], out[1]


def _computed_features(
    config: PairingConfig, und: HalfSet, gen: HalfSet
) -> tuple[np.ndarray, np.ndarray]:
    mesh = sharding.make_mesh(config.mesh)
    dtype_name = config.dtype or ("fp32" if jax.default_backend() == "cpu" else "bf16")
    if config.encoder is Encoder.SIGLIP:
        extractor = features_lib.siglip_extractor(config.model, mesh, DTYPES[dtype_name])
    else:
        extractor = features_lib.clip_extractor(config.reward, mesh, DTYPES[dtype_name])
    out = []
    for halves in (und, gen):
        paths = [r.image_path for r in halves.records]
        cached = None
        if config.feature_cache:
            key = features_lib.cache_key(extractor, paths)
            cached = config.cache_dir / f"{halves.side}-{key}.npy"
        if cached is not None and cached.is_file():
            features = np.load(cached, allow_pickle=False)
            print(f"{halves.side}: {len(paths)} features from the cache {cached}")
        else:
            features = _extract(config, extractor, halves, paths)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                with _atomic_file(cached, overwrite=False, binary=True) as f:
                    np.save(f, features)
        out.append(
            _drop_invalid(config, halves, features, lambda r: f"the {config.encoder} feature")
        )
    return out[0], out[1]


def _extract(
    config: PairingConfig,
    extractor: features_lib.FeatureExtractor,
    halves: HalfSet,
    paths: list[Path],
) -> np.ndarray:
    start = time.perf_counter()
    try:
        features = features_lib.extract_features(
            extractor,
            paths,
            batch_size=config.batch_size,
            desc=f"{halves.side} features",
            progress=config.progress,
        )
    except features_lib.ImageDecodeError as e:
        record = halves.records[e.index]
        raise DataError(
            [Issue(ErrorKind.UNREADABLE_IMAGE, record.file, record.line, "image_path", str(e))]
        ) from e
    seconds = time.perf_counter() - start
    print(
        f"{halves.side}: {len(paths)} images in {seconds:.1f} s "
        f"({len(paths) / seconds:.1f} images/s, including compilation)"
    )
    return features


def _drop_invalid(
    config: PairingConfig,
    halves: HalfSet,
    features: np.ndarray,
    what: Callable[[HalfRecord], str],
) -> np.ndarray:
    """Reports rows that cannot be normalised (raise, or skip their records); normalises the rest.

    what: names a record's feature in the message ("row 17 of U.npy")."""
    problems = features_lib.invalid_rows(features)
    if problems:
        issues = []
        for i, reason in sorted(problems.items()):
            record = halves.records[i]
            message = f"{what(record)} {reason}"
            issues.append(
                Issue(ErrorKind.INVALID_FEATURE, record.file, record.line, "features", message)
            )
        if config.on_error == "raise":
            raise DataError(issues[:1])
        for issue in issues:
            halves.skip([issue])
        keep = np.ones(len(features), bool)
        keep[list(problems)] = False
        halves.records = [r for r, k in zip(halves.records, keep, strict=True) if k]
        features = features[keep]
        if not halves.records:
            raise PairingError(f"{halves.file}: no {halves.side} records with valid features")
    return features_lib.normalize_rows(features)


# -- output ---------------------------------------------------------------------------------------


def _write_pairs(
    config: PairingConfig,
    aligned: list[HalfRecord],
    matches: Matches,
    und: HalfSet,
    gen: HalfSet,
) -> None:
    base = config.out.absolute().parent
    with _atomic_file(config.out, config.overwrite) as f:
        for record in aligned:
            half = _half(record, base)
            _write_line(
                f,
                {"similarity": 1.0, "aligned": True, "generate_ann": half, "understand_ann": half},
            )
        for g, u, s in zip(matches.queries, matches.keys, matches.similarities, strict=True):
            similarity = min(round(float(s), 6), 1.0)
            line: dict[str, Any] = {"similarity": similarity}
            if similarity >= ALIGNED_SIMILARITY:
                line["aligned"] = False
            line["generate_ann"] = _half(gen.records[g], base)
            line["understand_ann"] = _half(und.records[u], base)
            _write_line(f, line)


def _half(record: HalfRecord, base: Path) -> dict[str, Any]:
    half = dict(record.raw)
    half["image_path"] = os.path.relpath(record.image_path, base)
    return half


def _write_line(f: IO[str], obj: dict[str, Any]) -> None:
    f.write(json.dumps(obj, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def _atomic_file(path: Path, overwrite: bool, binary: bool = False) -> Iterator[IO]:
    """A temporary sibling of ``path`` that replaces it only when the block succeeds."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} appeared while writing; not replaced (pass --overwrite)")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _summary(
    config: PairingConfig,
    und: HalfSet,
    gen: HalfSet,
    candidates: int,
    aligned: tuple[np.ndarray, np.ndarray],
    matches: Matches,
) -> PairingSummary:
    """aligned: the understanding and generation record indices of the aligned pairs."""
    summary = PairingSummary(
        understanding_in=und.lines,
        generation_in=gen.lines,
        understanding_skipped=und.skipped,
        generation_skipped=gen.skipped,
        errors_by_kind=und.errors_by_kind + gen.errors_by_kind,
        candidates=candidates,
        similarities=matches.similarities,
        options=config.options(),
    )
    und_aligned, gen_aligned = aligned
    summary.aligned_from_understanding.update(und.records[i].tag for i in und_aligned)
    summary.aligned_from_generation.update(gen.records[i].tag for i in gen_aligned)
    summary.retrieved_generation_tags.update(gen.records[i].tag for i in matches.queries)
    summary.retrieved_understanding_tags.update(und.records[i].tag for i in matches.keys)
    used_und = set(und_aligned.tolist()) | set(matches.keys.tolist())
    used_gen = set(gen_aligned.tolist()) | set(matches.queries.tolist())
    summary.unmatched_generation.update(
        r.tag for i, r in enumerate(gen.records) if i not in used_gen
    )
    summary.unused_understanding.update(
        r.tag for i, r in enumerate(und.records) if i not in used_und
    )
    return summary
