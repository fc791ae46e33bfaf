"""Benchmark: ``pairuni eval`` understanding throughput (questions/s), batch 1 vs a batch.

Runs the evaluator of ``pairuni eval`` (``evaluation.Evaluator``: greedy answers with the Janus
chat template, the letter read in the same program) on in-memory multiple-choice questions with
random images, for two random models in fp32 on this CPU:

- tiny: ``JanusConfig.tiny()`` (the test model: 16 image tokens);
- small: the ``bench_rollout.py`` model (``LlamaConfig.small()``: width 512 x 8 layers, vocab
  102,400, 576 image tokens from a tiny SigLIP at 384 px).

The prompts use the bundled tiny tokenizer. Each set-up is run once to compile, then timed
``--repeats`` times (best reported); random models rarely stop early, so every answer is about
``--answer-tokens`` long.

    python scripts/bench_eval.py [--threads 2] [--batch 8] [--answer-tokens 64] \\
        [--questions-tiny 32] [--questions-small 16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--batch", type=int, default=8, help="the batched run's batch size")
    parser.add_argument("--answer-tokens", type=int, default=64)
    parser.add_argument("--questions-tiny", type=int, default=32)
    parser.add_argument("--questions-small", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    return parser.parse_args()


ARGS = parse_args()
os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: ARGS.threads])

import dataclasses  # noqa: E402
import io  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from PIL import Image  # noqa: E402

from pairuni_jax.data.pipeline import TINY_TOKENIZER  # noqa: E402
from pairuni_jax.data.prompts import PromptEncoder, SpecialIds, load_tokenizer  # noqa: E402
from pairuni_jax.evaluation import EvalSettings, Evaluator, Question, build_question  # noqa: E402
from pairuni_jax.models.janus import Janus, JanusConfig  # noqa: E402
from pairuni_jax.models.llama import LlamaConfig  # noqa: E402
from pairuni_jax.models.random_init import random_module  # noqa: E402
from pairuni_jax.models.siglip import SiglipConfig  # noqa: E402
from pairuni_jax.models.vq import VQConfig  # noqa: E402
from pairuni_jax.rewards.accuracy import OptionLetterTable  # noqa: E402

SMALL = JanusConfig(
    text=LlamaConfig.small(),
    vision=SiglipConfig(hidden_size=64, num_layers=1, num_heads=2),
    vq=VQConfig(base_channels=32, latent_channels=32, num_res_blocks=1),
)


def questions(n: int) -> list[Question]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        buffer = io.BytesIO()
        pixels = rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buffer, format="PNG")
        options = {"A": "a cat", "B": "a dog", "C": f"{i} birds", "D": "nothing"}
        text = build_question(f"What does picture {i} show?", options)
        out.append(
            Question(
                str(i), None, i + 1, text, "ABCD"[i % 4], tuple("ABCD"), "q", buffer.getvalue()
            )
        )
    return out


def bench(name: str, config: JanusConfig, count: int) -> None:
    tokenizer = load_tokenizer(TINY_TOKENIZER)
    config = dataclasses.replace(config, image_token_id=SpecialIds.from_tokenizer(tokenizer).image)
    model = random_module(lambda: Janus(config, rngs=nnx.Rngs(0)), seed=0)
    graphdef, state = nnx.split(model)
    encoder = PromptEncoder(tokenizer, config.num_image_tokens)
    letters = OptionLetterTable.from_tokenizer(tokenizer, vocab_size=config.text.vocab_size)
    qs = questions(count)
    rates = {}
    for batch in (1, ARGS.batch):
        settings = EvalSettings(max_new_tokens=ARGS.answer_tokens, batch_size=batch)
        evaluator = Evaluator(
            graphdef, config, encoder, letters, settings, questions=qs, show_progress=False
        )
        start = time.perf_counter()
        evaluator.run((state,))
        first = time.perf_counter() - start
        best = min(_seconds(lambda e=evaluator: e.run((state,))) for _ in range(ARGS.repeats))
        rates[batch] = count / best
        length = evaluator.questions.prompt_length
        print(
            f"{name:5s} batch {batch:2d}: {count} questions ({length}-token prompts, "
            f"{ARGS.answer_tokens} new tokens) in {best:.2f} s = {rates[batch]:7.2f} questions/s "
            f"(first run, with compilation: {first:.1f} s)",
            flush=True,
        )
    print(
        f"{name:5s} batch {ARGS.batch} / batch 1 = {rates[ARGS.batch] / rates[1]:.2f}x", flush=True
    )


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    print(
        f"JAX {jax.__version__} on {jax.devices()[0].platform}, {ARGS.threads} core(s), fp32",
        flush=True,
    )
    bench("tiny", JanusConfig.tiny(), ARGS.questions_tiny)
    bench("small", SMALL, ARGS.questions_small)


if __name__ == "__main__":
    main()
