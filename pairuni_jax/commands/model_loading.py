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

import jax
import jax.numpy as jnp

from pairuni_jax.data.prompts import PromptEncoder, load_tokenizer
from pairuni_jax.models.janus import Janus

DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}


def add_model_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--model", required=required, help="Orbax model directory (with tokenizer)")
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
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
    from pairuni_jax.checkpoint.convert import load_model

    directory = Path(args.model)
    dtype_name = args.dtype or ("fp32" if jax.default_backend() == "cpu" else "bf16")
    start = time.perf_counter()
    model = load_model(directory, dtype=DTYPES[dtype_name])
    try:
        tokenizer = load_tokenizer(directory)
    except (OSError, ValueError) as e:
        raise ValueError(f"{directory}: cannot load the tokenizer files of the model ({e})") from e
    encoder = PromptEncoder(tokenizer, model.config.num_image_tokens)
    seconds = time.perf_counter() - start
    print(f"loaded {directory} ({dtype_name}) in {seconds:.1f} s", file=sys.stderr)
    return LoadedModel(model, encoder)
