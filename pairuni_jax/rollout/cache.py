"""KV-cache set-up and decode-step helpers shared by the text and image rollouts.

The cache lives inside the compiled rollout: it is allocated in-graph, updated in place by the
decode loop and dropped at the end, so it never exists as a host-visible buffer (nothing to donate,
nothing kept alive between calls). Its dtype is the model's compute dtype (bf16 on accelerators).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pairuni_jax.models.janus import Janus, positions_from_mask
from pairuni_jax.models.llama import DecoderLayer, KVCache
from pairuni_jax.sharding import constrain

Array = jax.Array


def constrain_cache(cache: KVCache) -> KVCache:
    """Batch-sharded cache: each layer's k, v [B, K, T, D] over (batch, kv_heads)."""
    names = ("batch", "kv_heads", "cache_length", "head_dim")
    return cache.replace(
        k=tuple(constrain(x, *names) for x in cache.k),
        v=tuple(constrain(x, *names) for x in cache.v),
        valid=constrain(cache.valid, "batch", "cache_length"),
    )


def repeat_rows(x: Array, times: int, group: int = 1, axis: int = 0) -> Array:
    """Repeats each block of ``group`` consecutive rows along ``axis`` ``times`` times in place.

    [a, b] with group 1, times 2 → [a, a, b, b]; [a0, a1, b0, b1] with group 2 →
    [a0, a1, a0, a1, b0, b1, b0, b1] (a CFG pair stays together).
    """
    if times == 1:
        return x
    shape = x.shape
    blocks = x.reshape(*shape[:axis], shape[axis] // group, group, *shape[axis + 1 :])
    blocks = jnp.repeat(blocks, times, axis=axis)
    return blocks.reshape(*shape[:axis], shape[axis] * times, *shape[axis + 1 :])


def prefill(
    model: Janus,
    embeds: Array,
    prompt_mask: Array,
    cache_length: int,
    layers: tuple[DecoderLayer, ...],
    samples_per_prompt: int = 1,
    group: int = 1,
) -> tuple[Array, KVCache]:
    """Runs the left-padded prompts through the LLM into a fresh cache, once per prompt.

    embeds: [R, S, H]; prompt_mask: bool[R, S] (False on left padding); cache_length: T ≥ S;
    layers: ``model.language_model.split_layers()``, shared with the decode loop.
    samples_per_prompt: K; the hidden state and the cache of each block of ``group`` rows (a
    prompt, or a CFG pair) are then repeated K times, so K samples share one prefill.
    The prompt attends over its own S slots only; the T − S empty slots are appended after
    (``extend``).
    Returns the final-norm hidden state of the last prompt position [R·K, H] and the cache.
    """
    batch, length, _ = embeds.shape
    if cache_length < length:
        raise ValueError(f"cache length {cache_length} is shorter than the prompt ({length})")
    cache = KVCache.create(model.config.text, batch, length, model.dtype)
    # The fresh cache is a compile-time constant: without the barrier XLA constant-folds the
    # prefill's attention over it (seconds of compile time for nothing).
    cache = constrain_cache(jax.lax.optimization_barrier(cache))
    hidden, cache = model(embeds, positions_from_mask(prompt_mask), prompt_mask, cache, layers)
    cache = cache.replace(
        k=tuple(repeat_rows(x, samples_per_prompt, group) for x in cache.k),
        v=tuple(repeat_rows(x, samples_per_prompt, group) for x in cache.v),
        valid=repeat_rows(cache.valid, samples_per_prompt, group),
    )
    return repeat_rows(hidden[:, -1], samples_per_prompt, group), extend(cache, cache_length)


def extend(cache: KVCache, length: int) -> KVCache:
    """The cache with empty slots appended up to ``length`` (one copy of it)."""
    if length < cache.length:
        raise ValueError(f"cannot shrink a KV cache of {cache.length} slots to {length}")

    def pad(x: Array, axis: int) -> Array:
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, length - cache.length)
        return jnp.pad(x, widths)

    return constrain_cache(
        cache.replace(
            k=tuple(pad(x, 2) for x in cache.k),
            v=tuple(pad(x, 2) for x in cache.v),
            valid=pad(cache.valid, 1),
        )
    )


def decode_step(
    model: Janus,
    embeds: Array,
    positions: Array,
    cache: KVCache,
    layers: tuple[DecoderLayer, ...],
) -> tuple[Array, KVCache]:
    """One new position per row: embeds [B, H], positions int32[B] → hidden [B, H], cache."""
    ones = jnp.ones((embeds.shape[0], 1), bool)
    hidden, cache = model(embeds[:, None], positions[:, None], ones, cache, layers)
    return hidden[:, 0], constrain_cache(cache)
