"""``pairuni export RUN_DIR DST [--step N] [--format transformers|deepseek] [--dtype bf16|fp32]``."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="a trained policy (train checkpoint) -> Hugging Face checkpoint",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("run_dir", help="the run directory of `pairuni train`")
    parser.add_argument("dst", help="output directory (must not exist unless --overwrite)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--format", choices=("transformers", "deepseek"), default="transformers")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default=None)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument(
        "--adapters-only",
        action="store_true",
        help="a LoRA run: write only its adapters (PEFT's adapter_model.safetensors + "
        "adapter_config.json) instead of merging them into the base",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pairuni_jax.export import export_run

    try:
        out = export_run(
            args.run_dir,
            args.dst,
            step=args.step,
            format=args.format,
            dtype=args.dtype,
            overwrite=args.overwrite,
            adapters_only=args.adapters_only,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0
