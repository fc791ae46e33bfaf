"""``pairuni verify`` at Janus-Pro's shapes on a small random model: stage times and peak memory.

Builds one perturbed random transformers Janus with the real text vocabulary (102400), the real
image geometry (384 px, 16 px SigLIP patches: 576 understanding tokens; VQ-16 downsampling: 576
image tokens) and small widths (LLM 512 × 8 layers, SigLIP 64 × 2, VQ base 32 channels), saves it
with ``save_pretrained`` next to the bundled tiny tokenizer, and runs the command on it:

    python scripts/bench_verify.py [--out DIR] [--dtype fp32|bf16] [--torch-threads N]

The real checkpoints are not reachable from the build machines; this measures what the command
costs beyond the model itself (576-token CFG generation on both sides, JAX compilation).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import torch
import transformers

from pairuni_jax import cli
from pairuni_jax.checkpoint import hf_config
from pairuni_jax.data.prompts import load_tokenizer
from pairuni_jax.models.janus import JanusConfig
from pairuni_jax.models.llama import LlamaConfig
from pairuni_jax.models.siglip import SiglipConfig
from pairuni_jax.models.vq import VQConfig

TOKENIZER = Path(__file__).resolve().parents[1] / "pairuni_jax" / "assets" / "tiny_tokenizer"
SMALL = JanusConfig(
    text=dataclasses.replace(LlamaConfig.small(), max_position_embeddings=2048),
    vision=SiglipConfig(hidden_size=64, num_layers=2, num_heads=2),
    vq=VQConfig(base_channels=32, latent_channels=32, num_res_blocks=1),
    image_token_id=3,  # the tiny tokenizer's <image_placeholder>
)


def build(directory: Path) -> Path:
    torch.manual_seed(0)
    model = transformers.JanusForConditionalGeneration(
        hf_config.transformers_config(SMALL, "float32")
    ).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-trivial norms and biases, as a trained model has
        for param in model.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=generator))
    model.save_pretrained(directory)
    load_tokenizer(TOKENIZER).save_pretrained(directory)
    return directory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="keep the checkpoint and report")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="PyTorch intra-op threads (default: torch's; 1 on an oversubscribed shared VM)",
    )
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        source = build(root / "janus-small")
        report = root / f"REPORT-small-{args.dtype}.md"
        code = cli.main(
            ["verify", "--janus", str(source), "--dtype", args.dtype, "--out", str(report)]
        )
        print(report.read_text().split("## Stages")[1])
    return code


if __name__ == "__main__":
    sys.exit(main())
