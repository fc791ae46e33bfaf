"""The ``pairuni`` command line: one entry point, one module per subcommand.

Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its parser and sets
``func`` (called with the parsed arguments, returns an exit code). Modules are imported only when
the CLI runs, so ``pairuni --help`` stays fast and importing the library stays free of side effects.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMAND_MODULES = (
    "pairuni_jax.commands.train",
    "pairuni_jax.commands.sft",
    "pairuni_jax.commands.convert",
    "pairuni_jax.commands.generate",
    "pairuni_jax.commands.answer",
    "pairuni_jax.commands.data",
    "pairuni_jax.commands.plan",
    "pairuni_jax.commands.export",
    "pairuni_jax.commands.verify",
    "pairuni_jax.commands.eval",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pairuni",
        description=(
            "Pair-GRPO training of Janus-Pro in JAX: train, sft, convert, generate, answer, data, "
            "plan, export, verify, eval."
        ),
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
