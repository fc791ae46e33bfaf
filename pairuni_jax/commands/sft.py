"""``pairuni sft [--config FILE ...] [key.sub=value ...] [--overwrite]``: supervised warm start.

Teacher-forces a Janus policy on the answers and generation images of a pair file and writes
the result as a model directory (``out``), ready for ``pairuni train model.path=OUT``. The
defaults warm-start a random tiny Janus on the bundled demo pairs (``pairuni_jax/sft.py``).
"""

from __future__ import annotations

import argparse
import sys

from pairuni_jax.commands.train import add_run_config_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sft",
        help="supervised warm start on pairs (answers and image tokens), written as a model dir",
        description=__doc__.splitlines()[0],
    )
    add_run_config_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing out dir")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pairuni_jax.checkpoint.model_dir import NotAModelDirError
    from pairuni_jax.config import ConfigError
    from pairuni_jax.data.records import DataError
    from pairuni_jax.run_config import load_run_config
    from pairuni_jax.sft import SFTRunConfig, run_sft

    try:
        config = load_run_config(args.config, args.overrides, SFTRunConfig)
        run_sft(config, overwrite=args.overwrite)
    except (ConfigError, FileExistsError, NotAModelDirError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
