"""``pairuni verify``: check a real setup against the reference implementations.

    pairuni verify --janus SRC [--hps HPS_v2.1_compressed.pt] [--dtype fp32|bf16]
                   [--out REPORT.md] [--keep DIR] [--golden auto|none]
                   [--perturb-converted EPS] [--reference-device cpu|cuda]

SRC is a hub id (``deepseek-community/Janus-Pro-1B``, ``deepseek-ai/Janus-Pro-1B``; downloaded
with huggingface_hub) or a local checkpoint directory in either layout. The checkpoint is converted
with ``pairuni convert``'s converters and compared with transformers'
``JanusForConditionalGeneration`` (and, with ``--hps``, the reward model with open_clip + hpsv2's
preprocessing) in this process. Writes REPORT.md (and REPORT.png, the generated images), prints
one line per check; exit 0 when every check passes, 1 naming the failing checks, 2 on bad input.
Needs PyTorch, torchvision and open_clip at run time: ``pip install 'pairuni-jax[verify]'``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HPS_PRESETS = ("vit_h_14", "tiny")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="convert real checkpoints and compare with transformers / open_clip",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--janus", required=True, metavar="SRC", help="hub id or checkpoint directory"
    )
    parser.add_argument("--hps", type=Path, metavar="FILE", help="HPS_v2.1_compressed.pt")
    parser.add_argument(
        "--hps-preset",
        choices=HPS_PRESETS,
        default="vit_h_14",
        help="architecture of --hps (default vit_h_14, the released HPS files)",
    )
    parser.add_argument(
        "--dtype",
        choices=("fp32", "bf16"),
        default="fp32",
        help="JAX dtype: fp32 is judged, bf16 drift is measured (default fp32)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("REPORT.md"), help="Markdown report (default REPORT.md)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out (and its .png) if they exist"
    )
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="keep the converted model dirs in DIR"
    )
    parser.add_argument(
        "--golden",
        choices=("auto", "none"),
        default="auto",
        help="compare with the published Janus-Pro-1B image tokens (auto: when the sizes are "
        "Janus-Pro-1B's)",
    )
    parser.add_argument(
        "--perturb-converted",
        type=float,
        metavar="EPS",
        help="self-check: add EPS x N(0,1) to one converted LLM weight; the run must then fail",
    )
    parser.add_argument(
        "--reference-device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where transformers and open_clip run (default cpu)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pairuni_jax.checkpoint import hf_reader, hpsv2, janus_mapping
    from pairuni_jax.models.clip import CLIPConfig
    from pairuni_jax.verify import golden, report, runner

    out: Path = args.out
    for path in (out, report.picture_path(out)):
        if path.exists() and not args.overwrite:
            print(f"error: {path} exists; pass another --out or --overwrite", file=sys.stderr)
            return 2
    if args.reference_device == "cuda":  # JAX must leave GPU memory to PyTorch
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        options = runner.VerifyOptions(
            janus=args.janus,
            hps=args.hps,
            hps_config=getattr(CLIPConfig, args.hps_preset)(),
            dtype=args.dtype,
            golden=golden.GoldenMode(args.golden),
            keep=args.keep,
            perturb_converted=args.perturb_converted,
            reference_device=args.reference_device,
        )
        result = runner.run_verify(options)
    except (
        runner.VerifyError,
        hf_reader.CheckpointError,
        janus_mapping.MappingError,
        hpsv2.CheckpointMismatchError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report.write_report(result, out)
    for check in result.checks:
        print(f"{check.status.value:>8}  {check.name}: {check.measured}")
    print(result.summary())
    print(f"wrote {out}")
    return 1 if result.failed else 0
