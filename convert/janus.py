"""Janus-Pro checkpoint conversion, runnable without the ``pairuni`` entry point.

    python -m convert.janus hf-to-orbax SRC DST [--dtype bf16|fp32]
                                        [--format auto|deepseek|transformers]
    python -m convert.janus orbax-to-hf SRC DST [--format transformers|deepseek] [--dtype ...]

Same commands as ``pairuni convert hf-to-orbax`` / ``orbax-to-hf``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pairuni_jax.commands import convert_janus


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m convert.janus", description=__doc__.split("\n")[0]
    )
    convert_janus.register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
