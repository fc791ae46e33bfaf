"""``pairuni train [--config FILE ...] [key.sub=value ...]``: run Pair-GRPO.

With no arguments it runs the embedded tiny demo on CPU (``configs/tiny.yaml`` spells out the
same defaults). Config files are applied in order, then the overrides.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="run Pair-GRPO (no arguments: the tiny CPU demo)",
        description=__doc__.splitlines()[0],
    )
    add_run_config_arguments(parser)
    parser.set_defaults(func=run)


def add_run_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` (repeatable) and ``key.sub=value`` overrides, as ``load_run_config`` takes."""
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML run config; repeat to layer files (e.g. a model config, then a mesh preset)",
    )
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")


def run(args: argparse.Namespace) -> int:
    from pairuni_jax.run_config import load_run_config
    from pairuni_jax.train import train

    train(load_run_config(args.config, args.overrides))
    return 0
