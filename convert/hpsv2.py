"""``python -m convert.hpsv2 SRC.pt DST``: the same as ``pairuni convert hpsv2 SRC.pt DST``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pairuni_jax.commands import convert_hpsv2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m convert.hpsv2", description=convert_hpsv2.__doc__
    )
    convert_hpsv2.add_arguments(parser)
    return convert_hpsv2.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
