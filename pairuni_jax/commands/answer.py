"""``pairuni answer``: answer a question about an image, as Janus-Pro's understanding demo.

    pairuni answer --model DIR --image PATH --question "What is shown?" \\
        [--max-new-tokens 64 --greedy --temperature 1 --top-p 1 --top-k 0 --seed 0]

Uses the Janus chat template with its system prompt and the Janus image preprocessing (long side
resized to the model's image size, padded to a square with (127, 127, 127), mean = std = 0.5),
then prints the answer (special tokens removed).
"""

from __future__ import annotations

import argparse

import numpy as np

from pairuni_jax.commands import model_loading


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("answer", help="answer a question about an image")
    model_loading.add_model_arguments(parser)
    parser.add_argument("--image", required=True, help="the image file")
    parser.add_argument("--question", required=True, help="the question")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="default 64")
    parser.add_argument("--greedy", action="store_true", help="argmax instead of sampling")
    parser.add_argument("--temperature", type=float, default=1.0, help="default 1")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus mass (1 = off)")
    parser.add_argument("--top-k", type=int, default=0, help="top-k (0 = off)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp

    from pairuni_jax.data.images import load_and_preprocess
    from pairuni_jax.rollout import limits
    from pairuni_jax.rollout import text as text_rollout

    settings_kw = dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        greedy=args.greedy,
    )
    try:
        text_rollout.TextSettings(eos_id=0, pad_id=0, **settings_kw)  # validate before loading
        loaded = model_loading.load(args)
        encoder, model = loaded.encoder, loaded.model
        pixels = load_and_preprocess(args.image, model.config.vision.image_size)
        ids = encoder.understanding_ids(args.question)
        limits.check_positions(
            model.config, len(ids), args.max_new_tokens, "--question + --max-new-tokens"
        )
    except (OSError, ValueError) as e:
        print(f"error: {e}")
        return 2
    settings = text_rollout.TextSettings(
        eos_id=encoder.ids.eos, pad_id=encoder.ids.pad, **settings_kw
    )
    input_ids = jnp.asarray(ids[None])
    rollout = text_rollout.sample_text_jit(
        model,
        input_ids,
        jnp.ones(input_ids.shape, bool),
        jnp.asarray(pixels[None]),
        input_ids == encoder.ids.image,
        jax.random.key(args.seed),
        settings,
    )
    tokens = np.asarray(rollout.tokens[0, : int(rollout.lengths[0])])
    print(encoder.tokenizer.decode(tokens.tolist(), skip_special_tokens=True).strip())
    return 0
