"""``pairuni convert ...``: checkpoint converters, one sub-subcommand per module.

Each module in ``CONVERTER_MODULES`` exposes ``register(subparsers)`` like the top-level commands.
"""

from __future__ import annotations

import argparse
import importlib

CONVERTER_MODULES: tuple[str, ...] = (
    "pairuni_jax.commands.convert_janus",
    "pairuni_jax.commands.convert_hpsv2",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert checkpoints (Hugging Face, open_clip <-> Orbax)"
    )
    converters = parser.add_subparsers(dest="converter", metavar="CONVERTER")
    for name in CONVERTER_MODULES:
        importlib.import_module(name).register(converters)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
