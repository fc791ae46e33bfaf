"""Sampling rules (greedy, temperature, top-k, top-p) and per-row PRNG streams, all in fp32.

Shape letters: B rows, V vocabulary (or image codebook).

The *sampling distribution* of a rule is ``softmax(filtered_logits(logits, rule))``: the logits
divided by the temperature, with every token outside the top-k and outside the top-p nucleus set to
-inf. ``rule_log_probs`` evaluates it on any logits (for example a teacher-forced forward), so the
log-probs a rollout returns and the ones a train step recomputes are the same function. Greedy
decoding picks the argmax and reports log-probs under the untempered model, ``softmax(logits)``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SamplingRule:
    """How one token is drawn from logits.

    temperature: divides the logits (> 0); ignored when ``greedy``.
    top_k: keep the k most likely tokens; 0 = no top-k.
    top_p: keep the smallest set of most likely tokens whose probability reaches p (the first token
      always stays); 1.0 = no nucleus filter.
    greedy: take the argmax.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False

    def __post_init__(self):
        if not 0 < self.temperature < math.inf:
            raise ValueError(
                f"SamplingRule.temperature must be finite and > 0, got {self.temperature}"
            )
        if self.top_k < 0:
            raise ValueError(f"SamplingRule.top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingRule.top_p must be in (0, 1] (1 = off), got {self.top_p}")


def filtered_logits(logits: Array, rule: SamplingRule) -> Array:
    """logits: float[..., V] → fp32[..., V] whose softmax is the sampling distribution."""
    x = logits.astype(jnp.float32)
    if rule.greedy:
        return x
    x = x / jnp.float32(rule.temperature)
    if rule.top_k == 0 and rule.top_p == 1.0:
        return x
    if rule.top_k:
        ranked = jax.lax.top_k(x, min(rule.top_k, x.shape[-1]))[0]  # descending
    else:
        ranked = -jnp.sort(-x, axis=-1)
    if rule.top_p < 1.0:
        probs = jax.nn.softmax(ranked, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        ranked = jnp.where(mass_before < rule.top_p, ranked, jnp.inf)
    threshold = jnp.min(ranked, axis=-1, keepdims=True)
    return jnp.where(x >= threshold, x, -jnp.inf)


def rule_log_probs(logits: Array, tokens: Array, rule: SamplingRule) -> Array:
    """Log-probs of ``tokens: int[...]`` under the sampling distribution of ``logits: [..., V]``.

    For logits already computed (a decode step). The teacher-forced training forward, which
    starts from hidden states and also needs entropies, uses
    ``rl.logprobs.chunked_logprobs_and_entropy``.
    """
    log_probs = jax.nn.log_softmax(filtered_logits(logits, rule), axis=-1)
    return jnp.take_along_axis(log_probs, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]


def sample(logits: Array, keys: Array, rule: SamplingRule) -> tuple[Array, Array]:
    """Draws one token per row.

    logits: float[B, V]; keys: PRNG keys [B] (one stream per row, see ``step_keys``).
    Returns tokens int32[B] and their log-probs float32[B] under the sampling distribution.
    """
    x = filtered_logits(logits, rule)
    log_probs = jax.nn.log_softmax(x, axis=-1)
    if rule.greedy:
        tokens = jnp.argmax(x, axis=-1).astype(jnp.int32)
    else:
        uniform = 1.0 - jax.vmap(jax.random.uniform)(keys)  # in (0, 1]
        tokens = inverse_cdf(jnp.exp(log_probs), uniform)
    return tokens, jnp.take_along_axis(log_probs, tokens[:, None], axis=-1)[:, 0]


def inverse_cdf(probs: Array, uniform: Array, block: int = 256) -> Array:
    """The first token whose cumulative probability reaches ``uniform`` × total, per row.

    probs: float32[B, V] ≥ 0; uniform: float32[B] in (0, 1]. Returns int32[B]; a token of zero
    probability is never returned. One uniform per row instead of V Gumbel draws (the categorical
    sampler's cost on CPU); two levels (blocks of ``block`` tokens, then inside the block) keep the
    cumulative sums short.
    """
    b, v = probs.shape
    num_blocks = -(-v // block)
    blocks = jnp.pad(probs, ((0, 0), (0, num_blocks * block - v))).reshape(b, num_blocks, block)
    sums = jnp.sum(blocks, axis=-1)
    cumulative = jnp.cumsum(sums, axis=-1)
    target = uniform * cumulative[:, -1]
    chosen = jnp.minimum(jnp.sum(cumulative < target[:, None], axis=-1), num_blocks - 1)
    before = jnp.take_along_axis(cumulative - sums, chosen[:, None], axis=-1)[:, 0]
    inside = jnp.take_along_axis(blocks, chosen[:, None, None], axis=1)[:, 0]
    within = jnp.sum(jnp.cumsum(inside, axis=-1) < (target - before)[:, None], axis=-1)
    # Rounding can overshoot the block's last token of non-zero probability: stop there.
    last = block - 1 - jnp.argmax(inside[:, ::-1] > 0, axis=-1)
    return (chosen * block + jnp.minimum(within, last)).astype(jnp.int32)


def row_keys(rng: Array, batch: int) -> Array:
    """Independent PRNG streams for rows 0..B-1: ``fold_in(rng, row)``, keys [B].

    A row's samples depend only on ``rng``, its index and its own logits, not on the batch size.
    """
    return jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(batch, dtype=jnp.uint32))


def step_keys(keys: Array, step: Array | int) -> Array:
    """The keys [B] of decode step ``step`` (an int32 scalar, traced or not) for each row stream."""
    return jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
