"""``pairuni convert hpsv2 SRC.pt DST``: an HPSv2 / open_clip ViT checkpoint to a reward directory.

SRC is ``HPS_v2.1_compressed.pt`` (or v2.0; fp16 under ``state_dict``) or any open_clip ViT state
dict; DST gets Orbax params (fp32), ``config.json`` and the CLIP tokenizer files. The model's sizes
come from the tensors; the attention heads, which the tensors do not show, from ViT-H-14's head
widths (80 vision, 64 text) unless given. ``--preset`` / ``--config-json`` name the architecture
SRC must have, checked against the tensors.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PRESETS = ("vit_h_14", "tiny")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "hpsv2",
        help="HPSv2 / open_clip ViT checkpoint (.pt) -> Orbax reward directory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=Path, help="the torch checkpoint, e.g. HPS_v2.1_compressed.pt")
    parser.add_argument("dst", type=Path, help="the reward directory to create")
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        default=None,
        help="architecture SRC must have (vit_h_14: the HPSv2 model); default: from the tensors",
    )
    parser.add_argument(
        "--config-json",
        type=Path,
        default=None,
        help="architecture as CLIPConfig JSON, for other ViTs (overrides --preset)",
    )
    for tower, width in (("vision", 80), ("text", 64)):
        parser.add_argument(
            f"--{tower}-heads",
            type=int,
            default=None,
            help=f"{tower} attention heads (default: width / {width}, as ViT-H-14)",
        )
    parser.add_argument(
        "--bpe",
        type=Path,
        default=None,
        help="bpe_simple_vocab_16e6.txt.gz (default: the copy in open-clip-torch)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")


def run(args: argparse.Namespace) -> int:
    from pairuni_jax.checkpoint.hpsv2 import convert_hpsv2
    from pairuni_jax.models.clip import CLIPConfig

    try:
        config = None
        if args.config_json is not None:
            config = CLIPConfig.from_dict(json.loads(args.config_json.read_text()))
        elif args.preset is not None:
            config = getattr(CLIPConfig, args.preset)()
        dst, config = convert_hpsv2(
            args.src,
            args.dst,
            config,
            bpe_path=args.bpe,
            overwrite=args.overwrite,
            heads=(args.vision_heads, args.text_heads),
        )
    except (OSError, ValueError) as e:  # bad paths, keys, shapes, configs: no traceback needed
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {dst} (CLIP embed_dim {config.embed_dim}; vision {config.vision.layers} layers, "
        f"width {config.vision.width}, {config.vision.heads} heads; text {config.text.layers} "
        f"layers, width {config.text.width}, {config.text.heads} heads)"
    )
    return 0
