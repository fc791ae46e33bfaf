"""``pairuni train [--config FILE ...] [key.sub=value ...] [--allow-config-change FIELD ...]``.

With no arguments it runs the embedded tiny demo on CPU (``configs/tiny.yaml`` spells out the
same defaults). Config files are applied in order, then the overrides. A user error (config,
data, run directory, resume) is one ``error:`` line and exit code 2 (``--debug`` or
``PAIRUNI_DEBUG=1``: the traceback); the other exit codes are ``errors.ExitCode``.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="run Pair-GRPO (no arguments: the tiny CPU demo)",
        description=__doc__.splitlines()[0],
    )
    add_run_config_arguments(parser)
    parser.add_argument(
        "--allow-config-change",
        nargs="+",
        action="extend",
        default=[],
        metavar="FIELD",
        help="on resume, accept a changed value of FIELD (e.g. optimizer.learning_rate, steps; a "
        "section name accepts all its fields)",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks of user errors (or PAIRUNI_DEBUG=1)"
    )
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
    from pairuni_jax import errors

    # FIELD names never hold "=": whatever does is an override that followed the flag.
    fields = [f for f in args.allow_config_change if "=" not in f]
    overrides = [*args.overrides, *(f for f in args.allow_config_change if "=" in f)]
    return errors.run_reporting_user_errors(
        lambda: _train(args.config, overrides, tuple(fields)), (ValueError, OSError), args.debug
    )


def _train(paths: list[str], overrides: list[str], allowed_changes: tuple[str, ...]) -> int:
    from pairuni_jax import errors
    from pairuni_jax.rl import health
    from pairuni_jax.run_config import load_run_config
    from pairuni_jax.train import Trainer

    trainer = Trainer(load_run_config(paths, overrides), allowed_changes)
    try:
        trainer.run_steps()
    except health.NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return errors.ExitCode.NON_FINITE
    return trainer.stop.exit_code
