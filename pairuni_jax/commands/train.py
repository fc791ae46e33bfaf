"""``pairuni train [--config FILE ...] [key.sub=value ...]``: run Pair-GRPO.

With no arguments it runs the embedded tiny demo on CPU (``configs/tiny.yaml`` spells out the
same defaults). Config files are applied in order, then the overrides, then the cluster flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="run Pair-GRPO (no arguments: the tiny CPU demo)",
        description=__doc__.splitlines()[0],
    )
    add_run_config_arguments(parser)
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
    from pairuni_jax.cluster import ClusterError
    from pairuni_jax.run_config import load_run_config
    from pairuni_jax.train import train

    try:
        config = load_run_config(args.config, args.overrides)
        flags = {
            name: getattr(args, name)
            for name in ("coordinator", "num_processes", "process_id")
            if getattr(args, name) is not None
        }
        config = dataclasses.replace(config, cluster=dataclasses.replace(config.cluster, **flags))
        train(config)
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
