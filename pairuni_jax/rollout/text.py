"""Text rollouts (understanding answers): prefill + ``lax.while_loop`` decode with EOS per row.

Shape letters: B rows, S prompt length (left-padded), N = ``max_new_tokens``, H LLM width,
V vocabulary.

``sample_text`` is a pure function of the model, the batch arrays, a PRNG key and the (static)
settings with fixed output shapes, so it can run inside a larger jitted program (the train step)
or alone (``sample_text_jit``, ``jax.jit`` over the split model state). With ``(graphdef, params)``
call it on ``nnx.merge(graphdef, params)`` inside the jitted function. It takes the model or a
``layout.Decoder`` of it (the weights the loop reads, laid out for decoding once per step).
"""

from __future__ import annotations

import dataclasses
import functools

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from pairuni_jax.models.janus import Janus
from pairuni_jax.rollout import cache as cache_lib
from pairuni_jax.rollout import sampling
from pairuni_jax.rollout.layout import Decoder
from pairuni_jax.sharding import constrain

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class TextSettings:
    """Settings of a text rollout (hashable: a static argument of the compiled program).

    eos_id: the end-of-sentence token id (from the tokenizer, never hard-coded); a row stops after
      it. pad_id: the token written after a row's EOS.
    max_new_tokens: N, the completion length buffer.
    temperature, top_k, top_p, greedy: the ``sampling.SamplingRule``.
    samples_per_prompt: K completions per prompt, sharing one prefill (GRPO's group).
    """

    eos_id: int
    pad_id: int
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    samples_per_prompt: int = 1

    def __post_init__(self):
        if self.samples_per_prompt < 1:
            raise ValueError(
                f"TextSettings.samples_per_prompt must be >= 1, got {self.samples_per_prompt}"
            )
        if self.max_new_tokens < 1:
            raise ValueError(f"TextSettings.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        for name in ("eos_id", "pad_id"):
            if getattr(self, name) < 0:
                value = getattr(self, name)
                raise ValueError(f"TextSettings.{name} must be a token id >= 0, got {value}")
        self.rule  # noqa: B018  (validates the sampling fields)

    @property
    def rule(self) -> sampling.SamplingRule:
        return sampling.SamplingRule(self.temperature, self.top_k, self.top_p, self.greedy)


@flax.struct.dataclass
class TextRollout:
    """Row b·K + k is sample k of prompt b (K = ``samples_per_prompt``).

    tokens: int32[B·K, N] (``pad_id`` after EOS); log_probs: float32[B·K, N] under the sampling
    distribution (0 where masked); mask: bool[B·K, N], True up to and including EOS;
    lengths: int32[B·K] = ``mask.sum(-1)``."""

    tokens: Array
    log_probs: Array
    mask: Array
    lengths: Array


def sample_text(
    model: Janus | Decoder,
    input_ids: Array,
    prompt_mask: Array,
    pixel_values: Array | None,
    image_mask: Array | None,
    rng: Array,
    settings: TextSettings,
) -> TextRollout:
    """Samples ``settings.samples_per_prompt`` (K) completions per prompt row.

    model: the policy, or a ``Decoder`` of it (default: ``Decoder(model)``, the train layout).
    input_ids: int32[B, S] left-padded prompts; prompt_mask: bool[B, S], False on padding.
    pixel_values: float[M, s, s, 3] in [-1, 1] (M images) or None; image_mask: bool[B, S] marking
      the M × ``num_image_tokens`` placeholder slots, filled in row-major order (None: the
      positions of ``config.image_token_id``).
    rng: a PRNG key; output row r samples from the stream ``fold_in(rng, r)``, step t from
      ``fold_in(that, t)``, so the same key gives the same completions, and K samples of B
      prompts equal one sample of each prompt repeated K times.
    """
    decoder = model if isinstance(model, Decoder) else Decoder(model)
    k = settings.samples_per_prompt
    batch = input_ids.shape[0] * k
    n = settings.max_new_tokens
    rule = settings.rule
    input_ids = constrain(input_ids, "batch", "length")
    prompt_mask = constrain(prompt_mask, "batch", "length")
    embeds = decoder.source.embed(input_ids, pixel_values, image_mask)  # the vision tower as is
    with decoder.activations():
        model = decoder.model
        hidden, cache = cache_lib.prefill(
            model, embeds, prompt_mask, input_ids.shape[1] + n - 1, decoder.layers, k
        )
        prompt_lengths = jnp.repeat(jnp.sum(prompt_mask, axis=-1, dtype=jnp.int32), k)
        keys = sampling.row_keys(rng, batch)

        def pick(hidden, step, done):
            # Whole rows of logits: the softmax sums over the vocabulary on one device.
            logits = constrain(model.text_logits(hidden), "batch", None)
            token, log_prob = sampling.sample(logits, sampling.step_keys(keys, step), rule)
            return jnp.where(done, settings.pad_id, token), jnp.where(done, 0.0, log_prob)

        token, log_prob = pick(hidden, 0, jnp.zeros((batch,), bool))
        tokens = jnp.full((batch, n), settings.pad_id, jnp.int32).at[:, 0].set(token)
        log_probs = jnp.zeros((batch, n), jnp.float32).at[:, 0].set(log_prob)
        state = (
            jnp.ones((), jnp.int32),
            constrain(tokens, "batch", None),
            log_probs,
            token == settings.eos_id,
            cache,
        )

        def cond(state):
            step, _, _, done, _ = state
            return (step < n) & ~jnp.all(done)

        def body(state):
            step, tokens, log_probs, done, cache = state
            previous = jax.lax.dynamic_index_in_dim(tokens, step - 1, axis=1, keepdims=False)
            hidden, cache = cache_lib.decode_step(
                model, model.embed(previous), prompt_lengths + step - 1, cache, decoder.layers
            )
            token, log_prob = pick(hidden, step, done)
            tokens = jax.lax.dynamic_update_index_in_dim(tokens, token, step, axis=1)
            log_probs = jax.lax.dynamic_update_index_in_dim(log_probs, log_prob, step, axis=1)
            return step + 1, tokens, log_probs, done | (token == settings.eos_id), cache

        with jax.named_scope("answer_decode"):
            _, tokens, log_probs, _, _ = jax.lax.while_loop(cond, body, state)
        tokens, log_probs = constrain(tokens, "batch", None), constrain(log_probs, "batch", None)
    mask = completion_mask(tokens, settings.eos_id)
    return TextRollout(
        tokens=tokens,
        log_probs=jnp.where(mask, log_probs, 0.0),
        mask=mask,
        lengths=jnp.sum(mask, axis=-1, dtype=jnp.int32),
    )


def completion_mask(tokens: Array, eos_id: int) -> Array:
    """bool[B, N]: True up to and including each row's first ``eos_id``."""
    is_eos = tokens == eos_id
    return jnp.cumsum(is_eos, axis=-1) - is_eos == 0


@functools.partial(jax.jit, static_argnames=("graphdef", "settings"))
def _sample_text(graphdef, state, input_ids, prompt_mask, pixel_values, image_mask, rng, settings):
    model = nnx.merge(graphdef, state)
    return sample_text(model, input_ids, prompt_mask, pixel_values, image_mask, rng, settings)


def sample_text_jit(model: Janus, *args, **kwargs) -> TextRollout:
    """``sample_text(model, ...)`` as one compiled program (CLI, benchmarks; the KV cache lives
    inside it): ``jax.jit`` over the split model state (see ``image.sample_images_jit``)."""
    return _sample_text(*nnx.split(model), *args, **kwargs)
