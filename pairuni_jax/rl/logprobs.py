"""Log-probs and entropies of given tokens under a head, chunked so [B, T, V] never exists at once.

Shape letters: B rows, T positions, H width, V head size (102400 text vocabulary or 16384 codes).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def chunked_logprobs_and_entropy(
    hidden: Array,
    targets: Array,
    logits_fn: Callable[[Array], Array],
    temperature: float = 1.0,
    chunk_size: int = 128,
) -> tuple[Array, Array]:
    """log π(target) and the entropy of π at every position.

    hidden: float[B, T, H] states that predict ``targets`` int32[B, T] (already shifted);
    logits_fn: [B, C, H] → [B, C, V]. Logits are divided by ``temperature`` (the sampling
    distribution) and reduced in fp32, ``chunk_size`` positions at a time under remat, so the
    backward pass recomputes each chunk's logits instead of storing them.
    Returns (logp float32[B, T], entropy float32[B, T]).
    """
    b, t, h = hidden.shape
    chunk = min(chunk_size, t)
    pad = (-t) % chunk
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
    n = (t + pad) // chunk
    hidden = hidden.reshape(b, n, chunk, h).swapaxes(0, 1)
    targets = targets.reshape(b, n, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def one_chunk(args):
        h_chunk, y_chunk = args
        logits = logits_fn(h_chunk).astype(jnp.float32) / temperature
        logp_all = jax.nn.log_softmax(logits, axis=-1)
        logp = jnp.take_along_axis(logp_all, y_chunk[..., None], axis=-1)[..., 0]
        entropy = -(jnp.exp(logp_all) * logp_all).sum(-1)
        return logp, entropy

    logp, entropy = jax.lax.map(one_chunk, (hidden, targets))
    unchunk = lambda x: x.swapaxes(0, 1).reshape(b, n * chunk)[:, :t]  # noqa: E731
    return unchunk(logp), unchunk(entropy)
