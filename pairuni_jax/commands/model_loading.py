"""What ``pairuni generate`` and ``pairuni answer`` share: the model flags and loading.

A model directory (``pairuni convert hf-to-orbax``) holds the params, ``config.json`` and the
tokenizer files; the prompt encoder resolves every special token id from that tokenizer.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pairuni_jax.dtypes import DType

if TYPE_CHECKING:  # the CLI imports this module for its flags: no JAX, no data pipeline
    from pairuni_jax.data.prompts import PromptEncoder
    from pairuni_jax.models.janus import Janus


def add_model_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--model", required=required, help="Orbax model directory (with tokenizer)")
    parser.add_argument(
        "--dtype",
        type=DType,
        choices=list(DType),
        default=None,
        help="compute dtype (default: fp32 on CPU, bf16 on accelerators)",
    )
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed (same seed, same output)")


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    model: Janus
    encoder: PromptEncoder


def load(args: argparse.Namespace) -> LoadedModel:
    """Restores ``args.model`` on the first device and its tokenizer (reports on stderr)."""
    import jax

    from pairuni_jax.checkpoint.convert import load_model
    from pairuni_jax.data.prompts import PromptEncoder, load_tokenizer

    directory = Path(args.model)
    dtype = args.dtype or (DType.FP32 if jax.default_backend() == "cpu" else DType.BF16)
    start = time.perf_counter()
    model = load_model(directory, dtype=dtype.dtype)
    try:
        tokenizer = load_tokenizer(directory)
    except (OSError, ValueError) as e:
        raise ValueError(f"{directory}: cannot load the tokenizer files of the model ({e})") from e
    encoder = PromptEncoder(tokenizer, model.config.num_image_tokens)
    seconds = time.perf_counter() - start
    print(f"loaded {directory} ({dtype}) in {seconds:.1f} s", file=sys.stderr)
    return LoadedModel(model, encoder)
