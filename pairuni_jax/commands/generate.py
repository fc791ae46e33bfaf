"""``pairuni generate``: text-to-image with classifier-free guidance, as Janus-Pro's demo.

    pairuni generate --model DIR --prompt "A red apple on a table." --out DIR \\
        [--n 4 --cfg 5 --temperature 1 --seed 0 --greedy --dtype bf16]

Writes ``000.png`` ... (one per image) and ``grid.png`` into ``--out`` and prints the timing.
All image tokens are sampled by one compiled program (the first call includes compilation).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from pairuni_jax.commands import model_loading


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generate", help="generate images from a text prompt (CFG)")
    model_loading.add_model_arguments(parser)
    parser.add_argument("--prompt", required=True, help="what to draw")
    parser.add_argument("--out", required=True, help="directory for the PNGs and grid.png")
    parser.add_argument("--n", type=int, default=4, help="images to sample (default 4)")
    parser.add_argument("--cfg", type=float, default=5.0, help="guidance weight (default 5)")
    parser.add_argument("--temperature", type=float, default=1.0, help="default 1")
    parser.add_argument("--greedy", action="store_true", help="argmax instead of sampling")
    parser.set_defaults(func=run)


def grid(images: np.ndarray) -> np.ndarray:
    """uint8[N, s, s, 3] → one uint8 image, ceil(sqrt(N)) columns, black where a tile is empty."""
    n, size = images.shape[0], images.shape[1]
    columns = math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    canvas = np.zeros((rows * size, columns * size, images.shape[3]), np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        canvas[r * size : (r + 1) * size, c * size : (c + 1) * size] = image
    return canvas


def run(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp
    from PIL import Image

    from pairuni_jax.rollout import image as image_rollout
    from pairuni_jax.rollout import limits

    if args.n < 1:
        print(f"error: --n must be >= 1, got {args.n}")
        return 2
    try:
        settings_kw = dict(cfg_weight=args.cfg, temperature=args.temperature, greedy=args.greedy)
        image_rollout.ImageSettings(pad_id=0, **settings_kw)  # validate before loading the model
        loaded = model_loading.load(args)
        ids = loaded.encoder.generation_ids(args.prompt)
        image_tokens = loaded.model.config.num_generated_image_tokens
        limits.check_positions(loaded.model.config, len(ids), image_tokens, "--prompt")
    except (OSError, ValueError) as e:
        print(f"error: {e}")
        return 2
    model = loaded.model
    settings = image_rollout.ImageSettings(pad_id=loaded.encoder.ids.pad, **settings_kw)
    input_ids = jnp.asarray(np.tile(ids, (args.n, 1)))
    num_tokens = model.config.num_generated_image_tokens
    print(
        f"sampling {args.n} image(s) x {num_tokens} tokens (cfg {args.cfg}, "
        f"{'greedy' if args.greedy else f'temperature {args.temperature}'})...",
        flush=True,
    )
    start = time.perf_counter()
    rollout = image_rollout.sample_images_jit(
        model, input_ids, jnp.ones(input_ids.shape, bool), jax.random.key(args.seed), settings
    )
    images = np.asarray(image_rollout.decode_images_jit(model, rollout.tokens))
    seconds = time.perf_counter() - start
    print(
        f"sampled and decoded in {seconds:.1f} s including compilation "
        f"({args.n * num_tokens / seconds:.0f} tokens/s)"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(out / f"{i:03d}.png")
    Image.fromarray(grid(images)).save(out / "grid.png")
    print(f"wrote {args.n} image(s) and grid.png to {out}")
    return 0
