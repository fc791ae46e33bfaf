"""``pairuni convert hf-to-orbax`` / ``pairuni convert orbax-to-hf``: Janus-Pro checkpoints.

    pairuni convert hf-to-orbax SRC DST [--dtype bf16|fp32] [--format auto|deepseek|transformers]
    pairuni convert orbax-to-hf SRC DST [--format transformers|deepseek] [--dtype bf16|fp32]
                                        [--max-shard-size 5GB]

The library functions are in ``pairuni_jax.checkpoint.convert``.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    to_orbax = subparsers.add_parser(
        "hf-to-orbax",
        help="Hugging Face Janus-Pro checkpoint (transformers/DeepSeek layout) -> Orbax model dir",
    )
    to_orbax.add_argument(
        "src", help="checkpoint directory (or a hub id such as deepseek-ai/Janus-Pro-1B)"
    )
    to_orbax.add_argument("dst", help="new Orbax model directory")
    to_orbax.add_argument(
        "--dtype",
        choices=("bf16", "fp32"),
        default=None,
        help="stored param dtype (default: the checkpoint's)",
    )
    to_orbax.add_argument(
        "--format",
        choices=("auto", "deepseek", "transformers"),
        default="auto",
        help="source key layout (default: detected from the keys and config.json)",
    )
    to_orbax.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    to_orbax.set_defaults(func=run_hf_to_orbax)

    to_hf = subparsers.add_parser(
        "orbax-to-hf",
        help="Orbax model dir -> Hugging Face safetensors (transformers or DeepSeek layout)",
    )
    to_hf.add_argument("src", help="Orbax model directory")
    to_hf.add_argument("dst", help="new Hugging Face checkpoint directory")
    to_hf.add_argument(
        "--format",
        choices=("transformers", "deepseek"),
        default="transformers",
        help="key layout and config.json to write (default: transformers)",
    )
    to_hf.add_argument(
        "--dtype",
        choices=("bf16", "fp32"),
        default=None,
        help="stored dtype (default: the model directory's)",
    )
    to_hf.add_argument(
        "--max-shard-size",
        type=_size,
        default="5GB",
        help="largest safetensors file, e.g. 5GB, 500MB (default 5GB)",
    )
    to_hf.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    to_hf.set_defaults(func=run_orbax_to_hf)


def _size(text: str) -> int:
    from pairuni_jax.checkpoint.hf_writer import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _run(convert, **kwargs) -> int:
    from pairuni_jax.checkpoint import hf_reader, janus_mapping, model_dir

    try:
        out = convert(**kwargs)
    except (
        hf_reader.CheckpointError,
        janus_mapping.MappingError,
        model_dir.NotAModelDirError,
        FileExistsError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


def run_hf_to_orbax(args: argparse.Namespace) -> int:
    from pairuni_jax.checkpoint import convert

    return _run(
        convert.hf_to_orbax,
        src=args.src,
        dst=args.dst,
        dtype=args.dtype,
        format=args.format,
        overwrite=args.overwrite,
    )


def run_orbax_to_hf(args: argparse.Namespace) -> int:
    from pairuni_jax.checkpoint import convert

    return _run(
        convert.orbax_to_hf,
        src=args.src,
        dst=args.dst,
        format=args.format,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        overwrite=args.overwrite,
    )
