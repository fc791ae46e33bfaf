"""Image rollouts (generation): classifier-free-guided sampling of VQ tokens (spec/janus.md §5.2).

Shape letters: B images (one per prompt row), S prompt length (left-padded), P image tokens per
image (``config.num_generated_image_tokens``: 576 for Janus-Pro), H LLM width, C codebook size.

As in the original ``generation_inference.py``: every prompt row gets an unconditional twin
``[BOS, PAD, ..., PAD, <begin_of_image>]`` (the prompt with its inner tokens replaced by PAD), the
two rows sit next to each other in one batch of 2B (cond at even, uncond at odd rows, so a batch
shard keeps its pairs), the guided logits are ``uncond + w · (cond − uncond)``, and each sampled
token is fed back through ``embed_image_tokens`` to both rows. P is static, so the decode is
``lax.scan`` with no stopping logic (a few in a row, over a growing cache: ``cache_segments``).

``sample_images`` is a pure function with fixed shapes (see ``text.py`` for how to call it inside
a larger jitted program, with the model or a ``layout.Decoder``); ``sample_images_jit`` compiles
it alone (``decode_images_jit`` the VQ decode).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pairuni_jax.models.janus import Janus
from pairuni_jax.models.vq import to_uint8
from pairuni_jax.rollout import cache as cache_lib
from pairuni_jax.rollout import sampling
from pairuni_jax.rollout.layout import Decoder
from pairuni_jax.sharding import constrain

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ImageSettings:
    """Settings of an image rollout (hashable: a static argument of the compiled program).

    pad_id: the PAD token id of the unconditional prompt (from the tokenizer).
    cfg_weight: w, the guidance weight (1 = conditional only, 0 = unconditional only).
    temperature: divides the guided logits; greedy: argmax instead of sampling. The original has
      no top-k / top-p for images, so neither is offered.
    samples_per_prompt: K images per prompt, sharing one prefill (GRPO's group).
    cache_segments: the P decode steps run as this many loops, each over a KV cache just long
      enough for its last step (grown between loops), so early tokens do not attend over the
      empty slots of later ones: decode attention reads about 35% fewer slots at 4. Each loop
      is compiled separately (compile time grows with it); 1 = one loop over a full cache.
    """

    pad_id: int
    cfg_weight: float = 5.0
    temperature: float = 1.0
    greedy: bool = False
    samples_per_prompt: int = 1
    cache_segments: int = 4

    def __post_init__(self):
        if self.cache_segments < 1:
            raise ValueError(
                f"ImageSettings.cache_segments must be >= 1, got {self.cache_segments}"
            )
        if self.samples_per_prompt < 1:
            raise ValueError(
                f"ImageSettings.samples_per_prompt must be >= 1, got {self.samples_per_prompt}"
            )
        if self.pad_id < 0:
            raise ValueError(f"ImageSettings.pad_id must be a token id >= 0, got {self.pad_id}")
        if not 0 <= self.cfg_weight < math.inf:
            raise ValueError(
                f"ImageSettings.cfg_weight must be finite and >= 0 (1: no guidance), "
                f"got {self.cfg_weight}"
            )
        self.rule  # noqa: B018  (validates the temperature)

    @property
    def rule(self) -> sampling.SamplingRule:
        return sampling.SamplingRule(temperature=self.temperature, greedy=self.greedy)


@flax.struct.dataclass
class ImageRollout:
    """Row b·K + k is image k of prompt b (K = ``samples_per_prompt``).

    tokens: int32[B·K, P] in raster order; log_probs: float32[B·K, P] of each token under the
    guided sampling distribution; cond_log_probs: float32[B·K, P] under the conditional-only one
    (``softmax(cond / temperature)``)."""

    tokens: Array
    log_probs: Array
    cond_log_probs: Array


def unconditional_prompt(input_ids: Array, prompt_mask: Array, pad_id: int) -> Array:
    """int32[B, S]: each left-padded prompt with every real token but its first (BOS) and last
    (``<begin_of_image>``) replaced by ``pad_id``; the padding itself is left as it is."""
    length = input_ids.shape[1]
    first_real = length - jnp.sum(prompt_mask, axis=-1, keepdims=True)
    column = jnp.arange(length)[None]
    keep = (column == first_real) | (column == length - 1) | ~prompt_mask
    return jnp.where(keep, input_ids, pad_id)


def cfg_batch(input_ids: Array, prompt_mask: Array, pad_id: int) -> tuple[Array, Array]:
    """The guided batch: ids int32[2B, S] with row 2b = prompt b, row 2b+1 its unconditional
    twin; mask bool[2B, S] (the twin keeps the prompt's mask, hence its positions)."""
    uncond = unconditional_prompt(input_ids, prompt_mask, pad_id)
    ids = jnp.stack([input_ids, uncond], axis=1).reshape(-1, input_ids.shape[1])
    return ids, jnp.repeat(prompt_mask, 2, axis=0)


def guided_logits(logits: Array, cfg_weight: float) -> tuple[Array, Array]:
    """logits: [2B, C] of the interleaved batch → (guided, cond), both float32[B, C]."""
    pairs = logits.astype(jnp.float32).reshape(-1, 2, logits.shape[-1])
    cond, uncond = pairs[:, 0], pairs[:, 1]
    return uncond + jnp.float32(cfg_weight) * (cond - uncond), cond


def sample_images(
    model: Janus | Decoder,
    input_ids: Array,
    prompt_mask: Array,
    rng: Array,
    settings: ImageSettings,
) -> ImageRollout:
    """Samples ``settings.samples_per_prompt`` (K) images (P tokens each) per prompt with CFG.

    model: the policy, or a ``Decoder`` of it (default: ``Decoder(model)``, the train layout).
    input_ids: int32[B, S] left-padded generation prompts, each BOS first and
      ``<begin_of_image>`` last; prompt_mask: bool[B, S], False on padding.
    rng: a PRNG key; image r of the output samples from ``fold_in(rng, r)``, token t from
      ``fold_in(that, t)``: the same key gives the same images, and K images of B prompts equal
      one image of each prompt repeated K times.
    """
    decoder = model if isinstance(model, Decoder) else Decoder(model)
    k = settings.samples_per_prompt
    batch = input_ids.shape[0] * k
    num_tokens = decoder.source.config.num_generated_image_tokens
    rule = settings.rule
    with decoder.activations():
        model = decoder.model
        ids, mask = cfg_batch(
            constrain(input_ids, "batch", "length"),
            constrain(prompt_mask, "batch", "length"),
            settings.pad_id,
        )
        hidden, cache = cache_lib.prefill(
            model,
            model.embed(constrain(ids, "batch", "length")),
            constrain(mask, "batch", "length"),
            ids.shape[1],
            decoder.layers,
            samples_per_prompt=k,
            group=2,
        )
        next_positions = jnp.repeat(jnp.sum(prompt_mask, axis=-1, dtype=jnp.int32), 2 * k)
        keys = sampling.row_keys(rng, batch)

        def pick(hidden, step):
            # Whole rows of logits: the softmax sums over the codebook on one device.
            logits = constrain(model.image_logits(hidden), "batch", None)
            guided, cond = guided_logits(logits, settings.cfg_weight)
            token, log_prob = sampling.sample(guided, sampling.step_keys(keys, step), rule)
            return token, log_prob, sampling.rule_log_probs(cond, token, rule)

        def body(carry, step):
            token, cache = carry
            embeds = jnp.repeat(model.embed_image_tokens(token), 2, axis=0)
            hidden, cache = cache_lib.decode_step(
                model, embeds, next_positions + step - 1, cache, decoder.layers
            )
            out = pick(hidden, step)
            return (out[0], cache), out

        first = pick(hidden, 0)
        carry, outputs = (first[0], cache), [tuple(x[:, None] for x in first)]
        segments = np.array_split(np.arange(1, num_tokens, dtype=np.int32), settings.cache_segments)
        for steps in segments:
            if steps.size:  # step t writes slot S + t - 1
                carry = (carry[0], cache_lib.extend(carry[1], ids.shape[1] + int(steps[-1])))
                with jax.named_scope("image_decode"):
                    carry, out = jax.lax.scan(body, carry, jnp.asarray(steps))
                outputs.append(tuple(x.T for x in out))
        tokens, log_probs, cond_log_probs = (
            constrain(jnp.concatenate(parts, axis=1), "batch", None) for parts in zip(*outputs)
        )
    return ImageRollout(tokens=tokens, log_probs=log_probs, cond_log_probs=cond_log_probs)


def decode_images(model: Janus, tokens: Array) -> Array:
    """tokens: int32[B, P] → uint8[B, s, s, 3] (VQ decode, then the original clip-and-truncate)."""
    return to_uint8(model.decode_image_tokens(tokens))


# Compiled on their own (CLI, benchmarks): ``jax.jit`` over the split model state, as the train
# step does. ``nnx.jit`` would copy the whole state out after every call (flax 0.12: about
# 0.45 ms per MB) to propagate updates these functions never make.


@functools.partial(jax.jit, static_argnames=("graphdef", "settings"))
def _sample_images(graphdef, state, input_ids, prompt_mask, rng, settings):
    return sample_images(nnx.merge(graphdef, state), input_ids, prompt_mask, rng, settings)


def sample_images_jit(
    model: Janus, input_ids: Array, prompt_mask: Array, rng: Array, settings: ImageSettings
) -> ImageRollout:
    """``sample_images`` as one compiled program (the KV cache lives inside it)."""
    return _sample_images(*nnx.split(model), input_ids, prompt_mask, rng, settings)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _decode_images(graphdef, state, tokens):
    return decode_images(nnx.merge(graphdef, state), tokens)


def decode_images_jit(model: Janus, tokens: Array) -> Array:
    """``decode_images`` as one compiled program."""
    return _decode_images(*nnx.split(model), tokens)
