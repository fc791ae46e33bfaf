"""Trains the tiny BPE tokenizer shipped in ``pairuni_jax/assets/tiny_tokenizer/`` (deterministic).

A byte-level BPE (any text encodes; vocabulary <= 1024, the tiny Janus vocabulary) trained on the
demo pairs' captions and questions and the Janus chat template, with the Janus special tokens as
single tokens and BOS prepended on encode, like the real Janus tokenizer. The result loads with
``transformers.AutoTokenizer.from_pretrained(DIR)``. Build the demo pairs first; run with the
package importable (``pip install -e .``, or ``PYTHONPATH=.`` from the repository root).

    python scripts/build_tiny_tokenizer.py [--pairs JSONL] [--out DIR] [--vocab-size 1000]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from pairuni_jax.data import prompts

ASSETS = Path(__file__).resolve().parents[1] / "pairuni_jax" / "assets"
MAX_VOCAB = 1024
# Words a user of the demo is likely to type beyond the captions, so they stay short in tokens.
EXTRA_WORDS = (
    "zero one two three four five six seven eight nine ten many several some no a an the of on in "
    "at with and or to is are was there this that these those what which how where who why "
    "colour color shape count number image picture photo drawing scene background foreground "
    "left right top bottom middle centre center above below next beside between large small big "
    "tiny red green blue yellow purple orange pink brown black white grey gray cyan magenta "
    "circle circles square squares triangle triangles star stars rectangle rectangles line lines "
    "dot dots shapes object objects answer option options letter choice choices yes"
)


def corpus(pairs: Path) -> Iterator[str]:
    """Every text of the demo pairs, the rendered Janus prompts and the extra word list."""
    yield prompts.SYSTEM_PROMPT
    yield EXTRA_WORDS
    yield EXTRA_WORDS.title()
    with pairs.open(encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            for side in ("generate_ann", "understand_ann"):
                ann = record[side]
                yield ann["prompt"]
                yield ann["question"]
                yield prompts.understanding_prompt(ann["question"])
                yield prompts.generation_prompt(ann["prompt"])


def build(pairs: Path, out: Path, vocab_size: int) -> PreTrainedTokenizerFast:
    if vocab_size > MAX_VOCAB:
        raise ValueError(f"vocab_size {vocab_size} exceeds the tiny Janus vocabulary {MAX_VOCAB}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(prompts.SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(pairs), trainer)
    bos_id = tokenizer.token_to_id(prompts.BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{prompts.BOS} $A",
        pair=f"{prompts.BOS} $A $B:1",
        special_tokens=[(prompts.BOS, bos_id)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=prompts.BOS,
        eos_token=prompts.EOS,
        pad_token=prompts.PAD,
        additional_special_tokens=[
            prompts.IMAGE,
            prompts.BEGIN_OF_IMAGE,
            prompts.END_OF_IMAGE,
            prompts.USER,
            prompts.ASSISTANT,
        ],
        model_max_length=16384,
    )
    fast.save_pretrained(str(out))
    return fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, default=ASSETS / "demo_pairs" / "pairs.jsonl")
    parser.add_argument("--out", type=Path, default=ASSETS / "tiny_tokenizer")
    parser.add_argument("--vocab-size", type=int, default=1000)
    args = parser.parse_args()
    fast = build(args.pairs, args.out, args.vocab_size)
    print(f"wrote a {len(fast)}-token tokenizer to {args.out}")


if __name__ == "__main__":
    main()
