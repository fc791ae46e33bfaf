"""Analytic cost of the rollout engine: matmul FLOPs of its prefills and decode loops, the size of
its KV caches, and the HBM bytes a decode step reads.

Shape letters as in ``rl.train_step``: P prompts, K samples per prompt, S prompt length (left
padded), N answer tokens, I image tokens per image.

Counted as ``text.sample_text`` and ``image.sample_images`` run (``tests/test_rollout_cost.py``
holds the count against the compiled programs, so the two cannot drift apart):

- a prefill runs each prompt once (the K samples share it): S positions causally over their own
  S slots (``causal_attention``'s query blocks), then the cache is repeated K times and extended
  with empty slots;
- answers: SigLIP and the aligner on the P images, the prefill, the text head on the P·K rows,
  then N − 1 one-token steps in one ``while_loop``, each over the whole cache of S + N − 1 slots
  and through the text head (the worst case: no row stops early on EOS);
- images (classifier-free guidance: 2 rows per image): the prefill of 2P rows, the generation
  head on 2·P·K rows, then I − 1 steps in ``cache_segments`` loops (``np.array_split`` of steps
  1 … I − 1); the loop whose last step is t runs over a cache of S + t slots; each step feeds the
  sampled token back through the generation aligner (P·K rows, the twin shares it) and runs the
  2·P·K rows through the decoder and the generation head.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from pairuni_jax.models import cost
from pairuni_jax.models.janus import JanusConfig
from pairuni_jax.models.llama import LlamaConfig


@dataclasses.dataclass(frozen=True)
class RolloutFlops:
    """Global matmul FLOPs of one rollout, split into the prefill and the decode loops."""

    prefill: float
    decode: float

    @property
    def total(self) -> float:
        return self.prefill + self.decode


def image_segments(tokens: int, segments: int) -> list[tuple[int, int]]:
    """(steps, last step) of each image decode loop: steps 1 … I − 1 in ``segments`` loops."""
    parts = np.array_split(np.arange(1, tokens), segments)
    return [(len(p), int(p[-1])) for p in parts if len(p)]


def answer_flops(
    model: JanusConfig, prompts: int, samples: int, prompt_length: int, max_new_tokens: int
) -> RolloutFlops:
    """``sample_text`` of ``prompts`` image prompts, ``samples`` answers each."""
    t, rows = model.text, prompts * samples
    cache = prompt_length + max_new_tokens - 1
    head = cost.linear(rows, t.hidden_size, t.vocab_size)
    prefill = (
        cost.siglip_forward(model.vision, prompts)
        + cost.aligner(
            model.vision.hidden_size,
            t.hidden_size,
            model.aligner_depth,
            prompts * model.num_image_tokens,
        )
        + cost.llm_forward(t, prompts, prompt_length)
        + head
    )
    decode = (max_new_tokens - 1) * (cost.llm_forward(t, rows, 1, cache) + head)
    return RolloutFlops(prefill, decode)


def image_flops(
    model: JanusConfig, prompts: int, samples: int, prompt_length: int, cache_segments: int
) -> RolloutFlops:
    """``sample_images`` of ``prompts`` prompts, ``samples`` images each (CFG: 2 rows each)."""
    t, rows = model.text, prompts * samples
    head = cost.generation_head(t.hidden_size, model.vq.num_embeddings, 2 * rows)
    feedback = cost.aligner(model.vq.embed_dim, t.hidden_size, model.aligner_depth, rows)
    prefill = cost.llm_forward(t, 2 * prompts, prompt_length) + head
    decode = sum(
        steps * (cost.llm_forward(t, 2 * rows, 1, prompt_length + last) + feedback + head)
        for steps, last in image_segments(model.num_generated_image_tokens, cache_segments)
    )
    return RolloutFlops(prefill, decode)


def kv_cache_bytes(
    text: LlamaConfig, rows: int, slots: int, dtype: Any, batch_ways: int, head_ways: int
) -> int:
    """Per-device bytes of one KV cache (``models.llama.KVCache``): L keys and L values of
    [rows, K, slots, D], rows split ``batch_ways`` and heads ``head_ways`` ways, plus the valid
    mask bool[rows, slots]."""
    kv = 2 * text.num_layers * rows * slots * text.num_kv_heads * text.head_dim
    return kv * jnp.dtype(dtype).itemsize // (batch_ways * head_ways) + rows * slots // batch_ways


def loop_weight_params(model: JanusConfig) -> dict[str, int]:
    """Matmul parameters each decode loop reads per step: the decoder layers and the head (the
    embedding rows and norms are negligible)."""
    t = model.text
    layers = t.num_layers * cost.llm_layer_params(t)
    h, c = t.hidden_size, model.vq.num_embeddings
    feedback = model.vq.embed_dim * h + (model.aligner_depth - 1) * h * h
    return {
        "answers": layers + h * t.vocab_size,
        "images": layers + h * h + h * c + feedback,
    }
