"""Teacher-forced log-probs of sampled answers and images under the current policy.

Shape letters: B rows, S prompt length, N completion tokens, P image tokens, H LLM width.

These forwards re-score the rollouts with gradients: the answer after its (image-bearing) prompt,
and the image tokens after the generation prompt, either on the conditional branch alone
(``ImageLogprob.CONDITIONAL``, T2I-R1) or through classifier-free guidance
(``ImageLogprob.GUIDED``, Janus-Pro-R1). They use the same positions, temperature and guidance
as the samplers, so at the first inner step the ratio to the sampling-time log-probs is 1.
"""

from __future__ import annotations

import enum

import jax
import jax.numpy as jnp

from pairuni_jax.models.janus import Janus, positions_from_mask
from pairuni_jax.rl.logprobs import chunked_logprobs_and_entropy
from pairuni_jax.rollout.image import cfg_batch, guided_logits

Array = jax.Array


class ImageLogprob(enum.Enum):
    CONDITIONAL = "conditional"
    GUIDED = "guided"


def answer_logprobs(
    model: Janus,
    prompt_ids: Array,
    prompt_mask: Array,
    pixel_values: Array,
    completion: Array,
    completion_mask: Array,
    temperature: float,
    chunk_size: int,
) -> tuple[Array, Array]:
    """log π(answer token) and entropy: float32[B, N] each.

    prompt_ids, prompt_mask: [B, S] left-padded understanding prompts; pixel_values:
    float[B, s, s, 3] (one image per row); completion, completion_mask: [B, N].
    """
    s = prompt_ids.shape[1]
    n = completion.shape[1]
    embeds = jnp.concatenate(
        [model.embed(prompt_ids, pixel_values), model.embed(completion)], axis=1
    )
    mask = jnp.concatenate([prompt_mask, completion_mask], axis=1)
    hidden, _ = model(embeds, positions_from_mask(mask), mask)
    return chunked_logprobs_and_entropy(
        hidden[:, s - 1 : s - 1 + n], completion, model.text_logits, temperature, chunk_size
    )


def image_logprobs(
    model: Janus,
    prompt_ids: Array,
    prompt_mask: Array,
    tokens: Array,
    mode: ImageLogprob,
    cfg_weight: float,
    temperature: float,
    pad_id: int,
    chunk_size: int,
) -> tuple[Array, Array]:
    """log π(image token) and entropy: float32[B, P] each.

    prompt_ids, prompt_mask: [B, S] generation prompts ending in ``<begin_of_image>``;
    tokens: int32[B, P] sampled image tokens.
    """
    if mode is ImageLogprob.GUIDED:
        prompt_ids, prompt_mask = cfg_batch(prompt_ids, prompt_mask, pad_id)
        rows = jnp.repeat(tokens, 2, axis=0)
    else:
        rows = tokens
    s = prompt_ids.shape[1]
    p = tokens.shape[1]
    embeds = jnp.concatenate(
        [model.embed(prompt_ids), model.embed_image_tokens(rows[:, :-1])], axis=1
    )
    mask = jnp.concatenate([prompt_mask, jnp.ones(rows[:, :-1].shape, bool)], axis=1)
    hidden, _ = model(embeds, positions_from_mask(mask), mask)
    hidden = hidden[:, s - 1 : s - 1 + p]
    if mode is ImageLogprob.CONDITIONAL:
        return chunked_logprobs_and_entropy(
            hidden, tokens, model.image_logits, temperature, chunk_size
        )
    # Cond and uncond states side by side on the feature axis, so chunks keep their pairs.
    b, h = tokens.shape[0], hidden.shape[-1]
    paired = hidden.reshape(b, 2, p, h).transpose(0, 2, 1, 3).reshape(b, p, 2 * h)

    def logits_fn(x):
        both = model.image_logits(x.reshape(*x.shape[:-1], 2, h))  # [B, C, 2, codes]
        interleaved = both.reshape(-1, both.shape[-1])
        guided, _ = guided_logits(interleaved, cfg_weight)
        return guided.reshape(*x.shape[:-1], -1)

    return chunked_logprobs_and_entropy(paired, tokens, logits_fn, temperature, chunk_size)
