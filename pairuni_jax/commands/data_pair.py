"""``pairuni data pair``: build aligned and retrieved pairs from an understanding and a generation
set (PairUni Alg. 1; ``pairuni_jax.pairing``).

    pairuni data pair --understanding U.jsonl --generation G.jsonl --out pairs.jsonl \\
        --model JANUS_DIR [--clusters K] [--threshold 0.6] [--top-n 1] [--seed 0]
    pairuni data pair ... --encoder clip --reward HPS_DIR
    pairuni data pair ... --features-u U.npy --features-g G.npy

Writes ``pairs.jsonl`` and ``pairs.similarity.png`` and prints a summary. Bad input is one
``error:`` line naming the file, line and field (exit 2), unless ``--on-error skip``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    """Adds ``pair`` to the ``pairuni data`` subcommands."""
    from pairuni_jax.pairing.encoders import Encoder
    from pairuni_jax.pairing.selection import AlignedSelection

    parser = commands.add_parser(
        "pair",
        help="build aligned and retrieved pairs from understanding and generation records",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--understanding", required=True, type=Path, help="understanding JSONL")
    parser.add_argument("--generation", required=True, type=Path, help="generation JSONL")
    parser.add_argument("--out", required=True, type=Path, help="the pair JSONL to write")
    parser.add_argument(
        "--image-root",
        type=Path,
        help="directory image paths are relative to (default: each file's)",
    )
    features = parser.add_argument_group("features")
    features.add_argument(
        "--encoder",
        choices=[e.value for e in Encoder],
        default=Encoder.SIGLIP.value,
        help="image tower: siglip (Janus vision tower of --model, the default) or clip (HPS "
        "image tower of --reward)",
    )
    features.add_argument("--model", type=Path, help="Janus model directory (siglip encoder)")
    features.add_argument("--reward", type=Path, help="HPS reward directory (clip encoder)")
    features.add_argument("--features-u", type=Path, help="precomputed understanding features .npy")
    features.add_argument("--features-g", type=Path, help="precomputed generation features .npy")
    features.add_argument(
        "--feature-cache",
        action="store_true",
        help="keep computed features in OUT.features/ and reuse them when nothing changed",
    )
    features.add_argument("--batch-size", type=int, default=32, help="images per batch (32)")
    features.add_argument(
        "--dtype", choices=["fp32", "bf16"], help="tower compute dtype (fp32 on CPU, else bf16)"
    )
    features.add_argument(
        "--mesh", metavar="data=D,fsdp=F,tensor=T", help="device mesh (default: fsdp over all)"
    )
    pairing = parser.add_argument_group("pairing")
    pairing.add_argument(
        "--aligned-selection",
        choices=[s.value for s in AlignedSelection],
        default=AlignedSelection.KMEANS.value,
        help="how aligned pairs are chosen among records with their own completion (kmeans)",
    )
    pairing.add_argument("--clusters", type=int, help="K for kmeans and random selection")
    pairing.add_argument("--seed", type=int, default=0, help="seed of kmeans/random (0)")
    pairing.add_argument(
        "--top-n",
        type=int,
        default=1,
        help="candidate understanding records per generation one (1)",
    )
    pairing.add_argument(
        "--threshold", type=float, default=0.6, help="minimum cosine of a retrieved pair (0.6)"
    )
    parser.add_argument(
        "--on-error", choices=["raise", "skip"], default="raise", help="bad records: stop or skip"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pairuni_jax import sharding
    from pairuni_jax.data.records import DataError
    from pairuni_jax.pairing.build import PairingConfig, build_pairs
    from pairuni_jax.pairing.encoders import Encoder
    from pairuni_jax.pairing.inputs import PairingError
    from pairuni_jax.pairing.selection import AlignedSelection

    try:
        config = PairingConfig(
            understanding=args.understanding,
            generation=args.generation,
            out=args.out,
            image_root=args.image_root,
            encoder=Encoder(args.encoder),
            model=args.model,
            reward=args.reward,
            features_u=args.features_u,
            features_g=args.features_g,
            feature_cache=args.feature_cache,
            aligned_selection=AlignedSelection(args.aligned_selection),
            clusters=args.clusters,
            seed=args.seed,
            top_n=args.top_n,
            threshold=args.threshold,
            mesh=sharding.MeshConfig(**sharding.parse_mesh_flag(args.mesh))
            if args.mesh
            else sharding.MeshConfig(),
            on_error=args.on_error,
            overwrite=args.overwrite,
            batch_size=args.batch_size,
            dtype=args.dtype,
            progress=not args.no_progress,
        )
        summary = build_pairs(config)
    except DataError as e:
        print(f"error: {e.issues[0]}")
        return 2
    except (PairingError, ValueError, OSError) as e:  # FileExistsError is an OSError
        print(f"error: {e}")
        return 2
    print(summary.text())
    print(
        f"wrote {summary.aligned + summary.retrieved} pairs to {config.out} and the histogram to {config.histogram_path}"
    )
    return 0
