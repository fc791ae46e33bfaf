"""KV-cache set-up and decode-step helpers shared by the text and image rollouts.

The cache lives inside the compiled rollout: it is allocated in-graph, updated in place by the
decode loop and dropped at the end, so it never exists as a host-visible buffer (nothing to donate,
nothing kept alive between calls). Its dtype is the model's compute dtype (bf16 on accelerators).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pairuni_jax.models.janus import Janus, positions_from_mask
from pairuni_jax.models.llama import KVCache
from pairuni_jax.sharding import constrain

Array = jax.Array


def constrain_cache(cache: KVCache) -> KVCache:
    """Batch-sharded cache: k, v [L, B, T, K, D] over (layers, batch, cache_length, kv_heads)."""
    names = ("layers", "batch", "cache_length", "kv_heads", "head_dim")
    return cache.replace(
        k=constrain(cache.k, *names),
        v=constrain(cache.v, *names),
        valid=constrain(cache.valid, "batch", "cache_length"),
    )


def prefill(
    model: Janus,
    embeds: Array,
    prompt_mask: Array,
    cache_length: int,
) -> tuple[Array, KVCache]:
    """Runs the left-padded prompt through the LLM into a fresh cache.

    embeds: [B, S, H]; prompt_mask: bool[B, S] (False on left padding); cache_length: T ≥ S.
    Returns the final-norm hidden state of the last prompt position [B, H] and the cache.
    """
    batch, length, _ = embeds.shape
    if cache_length < length:
        raise ValueError(f"cache length {cache_length} is shorter than the prompt ({length})")
    cache = constrain_cache(KVCache.create(model.config.text, batch, cache_length, model.dtype))
    hidden, cache = model(embeds, positions_from_mask(prompt_mask), prompt_mask, cache)
    return hidden[:, -1], constrain_cache(cache)


def decode_step(
    model: Janus,
    embeds: Array,
    positions: Array,
    cache: KVCache,
) -> tuple[Array, KVCache]:
    """One new position per row: embeds [B, H], positions int32[B] → hidden [B, H], cache."""
    ones = jnp.ones((embeds.shape[0], 1), bool)
    hidden, cache = model(embeds[:, None], positions[:, None], ones, cache)
    return hidden[:, 0], constrain_cache(cache)
