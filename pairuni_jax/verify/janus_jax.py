"""The JAX side: the converted model directory through the project's model and rollout engine.

Greedy answers and CFG image tokens come from ``rollout.text.sample_text_jit`` and
``rollout.image.sample_images_jit``, the programs ``pairuni answer`` / ``generate`` and the trainer
run; the forward passes are jitted here. ``perturb_`` is the self-check of ``--perturb-converted``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pairuni_jax.checkpoint import janus_mapping
from pairuni_jax.models.janus import Janus, positions_from_mask
from pairuni_jax.rollout import image as image_rollout
from pairuni_jax.rollout import text as text_rollout
from pairuni_jax.verify.janus_io import JanusInputs, JanusOutputs, until_eos

# The converted weight ``--perturb-converted`` changes: layer 0's MLP output projection.
PERTURBED_MODULE = ("language_model", "layers", "mlp", "down_proj")
PERTURBED_LAYER = 0


@nnx.jit
def _text_logits(model: Janus, ids: jax.Array, pixels: jax.Array) -> jax.Array:
    mask = jnp.ones(ids.shape, bool)
    hidden, _ = model(model.embed(ids, pixels), positions_from_mask(mask), mask)
    return model.text_logits(hidden).astype(jnp.float32)


@nnx.jit
def _vision(model: Janus, pixels: jax.Array) -> tuple[jax.Array, jax.Array]:
    features = model.vision_model(pixels.astype(model.dtype))
    return features.astype(jnp.float32), model.aligner(features).astype(jnp.float32)


@nnx.jit
def _decode(model: Janus, tokens: jax.Array) -> jax.Array:
    return model.decode_image_tokens(tokens).astype(jnp.float32)


def jax_outputs(model: Janus, inputs: JanusInputs, reference_tokens: np.ndarray) -> JanusOutputs:
    """Every JAX output of the comparison; ``decoded`` decodes ``reference_tokens`` int32[P]."""
    ids = inputs.ids
    question = jnp.asarray(inputs.question_ids)
    pixels = jnp.asarray(inputs.pixels)
    logits = _text_logits(model, question, pixels)
    answer = text_rollout.sample_text_jit(
        model,
        question,
        jnp.ones(question.shape, bool),
        pixels,
        None,
        jax.random.key(0),
        text_rollout.TextSettings(
            eos_id=ids.eos, pad_id=ids.pad, max_new_tokens=inputs.max_new_tokens, greedy=True
        ),
    )
    prompt = jnp.asarray(inputs.image_prompt_ids)
    image = image_rollout.sample_images_jit(
        model,
        prompt,
        jnp.ones(prompt.shape, bool),
        jax.random.key(0),
        image_rollout.ImageSettings(pad_id=ids.pad, cfg_weight=inputs.cfg_weight, greedy=True),
    )
    tokens = np.asarray(image.tokens[0], np.int32)
    decoded = np.asarray(_decode(model, jnp.asarray(np.stack([reference_tokens, tokens]))))
    features, aligned = (np.asarray(x[0]) for x in _vision(model, pixels))
    length = int(answer.lengths[0])
    return JanusOutputs(
        text_logits=np.asarray(logits[0]),
        answer=until_eos(np.asarray(answer.tokens[0, :length]), ids.eos),
        image_tokens=tokens,
        decoded=decoded[0],
        own_image=decoded[1],
        vision_features=features,
        aligned=aligned,
    )


def perturb_(model: Janus, eps: float, seed: int = 0) -> str:
    """Adds ``eps`` × N(0, 1) to one converted LLM weight in place; returns its checkpoint key."""
    param = model.language_model.layers.mlp.down_proj.kernel
    value = param[...]
    noise = eps * jax.random.normal(jax.random.key(seed), value.shape[1:], jnp.float32)
    param[...] = value.at[PERTURBED_LAYER].add(noise.astype(value.dtype))
    return janus_mapping.join_hf_key(PERTURBED_MODULE, PERTURBED_LAYER, "weight")
