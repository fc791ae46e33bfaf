"""``pairuni train [--config FILE ...] [key.sub=value ...] [--allow-config-change FIELD ...]``.

With no arguments it runs the embedded tiny demo on CPU (``configs/tiny.yaml`` spells out the
same defaults). Config files are applied in order, then the overrides, then the cluster flags.
A user error (config, data, run directory, resume, cluster) is one ``error:`` line and exit
code 2 (``--debug`` or ``PAIRUNI_DEBUG=1``: the traceback); the other exit codes are
``errors.ExitCode``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any


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
    add_cluster_arguments(parser)
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


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``cluster`` section's coordinates as flags (they win over the config and environment)."""
    group = parser.add_argument_group(
        "cluster", "run as one of several processes (default: one process, or auto-detected)"
    )
    group.add_argument(
        "--coordinator", metavar="HOST:PORT", help="where process 0 listens (cluster.coordinator)"
    )
    group.add_argument(
        "--num-processes",
        type=int,
        metavar="N",
        help="processes in the run (cluster.num_processes)",
    )
    group.add_argument(
        "--process-id", type=int, metavar="I", help="this process, 0..N-1 (cluster.process_id)"
    )


def run(args: argparse.Namespace) -> int:
    from pairuni_jax import errors

    # FIELD names never hold "=": whatever does is an override that followed the flag.
    fields = [f for f in args.allow_config_change if "=" not in f]
    overrides = [*args.overrides, *(f for f in args.allow_config_change if "=" in f)]
    return errors.run_reporting_user_errors(
        lambda: _train(args.config, overrides, tuple(fields), cluster_flags(args)),
        (ValueError, OSError),
        args.debug,
    )


def cluster_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The cluster fields given as flags (``--coordinator``, ``--num-processes``, ``--process-id``)."""
    names = ("coordinator", "num_processes", "process_id")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def with_cluster_flags(config, flags: dict[str, Any]):
    """``config`` with the cluster ``flags`` over its ``cluster`` section."""
    return dataclasses.replace(config, cluster=dataclasses.replace(config.cluster, **flags))


def _train(
    paths: list[str],
    overrides: list[str],
    allowed_changes: tuple[str, ...],
    cluster: dict[str, Any],
) -> int:
    from pairuni_jax import errors
    from pairuni_jax.rl import health
    from pairuni_jax.run_config import load_run_config
    from pairuni_jax.train import Trainer

    trainer = Trainer(
        with_cluster_flags(load_run_config(paths, overrides), cluster), allowed_changes
    )
    try:
        trainer.run_steps()
    except health.NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return errors.ExitCode.NON_FINITE
    return trainer.exit_code
