"""Builds the bundled CLIP tokenizer (Hugging Face format) from open_clip's BPE vocabulary.

    python scripts/build_clip_tokenizer.py [--out pairuni_jax/assets/clip_tokenizer]

The demo's HPS prompts are tokenized with it at run time without torch or open_clip installed.
"""

import argparse

from pairuni_jax.checkpoint.hpsv2 import save_clip_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="pairuni_jax/assets/clip_tokenizer")
    args = parser.parse_args()
    for path in save_clip_tokenizer(args.out):
        print(path)


if __name__ == "__main__":
    main()
