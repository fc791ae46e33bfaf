"""The rollout engine's analytic cost model against the matmuls XLA compiles for the engine.

Prompts longer than one causal query block, an answer loop stopping on EOS (counted at its
bound), image decode in several cache segments: the count must follow each."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from pairuni_jax.models.janus import Janus, JanusConfig
from pairuni_jax.models.llama import CAUSAL_BLOCK
from pairuni_jax.plan.hlo import count_program
from pairuni_jax.rollout import cost
from pairuni_jax.rollout.image import ImageSettings, sample_images
from pairuni_jax.rollout.text import TextSettings, sample_text

CONFIG = JanusConfig.tiny()
PROMPTS, SAMPLES = 2, 3


@pytest.fixture(scope="module")
def model():
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Janus(CONFIG, rngs=nnx.Rngs(0))))
    return graphdef, state


def _counted(model, fn, *args) -> float:
    graphdef, state = model
    compiled = jax.jit(lambda s, *a: fn(nnx.merge(graphdef, s), *a)).lower(state, *args).compile()
    counts = count_program(compiled.as_text(), default_trip_count=0)
    assert counts.unknown_loops == 0
    return counts.flops["rollout"]


def test_answer_rollout_flops_match_the_compiled_engine(model):
    length, new = CAUSAL_BLOCK + 40, 9  # two query blocks in the prefill
    settings = TextSettings(eos_id=2, pad_id=0, max_new_tokens=new, samples_per_prompt=SAMPLES)
    size = CONFIG.vision.image_size
    ids = (
        jnp.zeros((PROMPTS, length), jnp.int32)
        .at[:, 1 : 1 + CONFIG.num_image_tokens]
        .set(CONFIG.image_token_id)
    )
    args = (
        ids,
        jnp.ones((PROMPTS, length), bool),
        jnp.zeros((PROMPTS, size, size, 3)),
        jax.random.key(0),
    )
    counted = _counted(
        model, lambda m, i, k, p, r: sample_text(m, i, k, p, None, r, settings), *args
    )
    analytic = cost.answer_flops(CONFIG, PROMPTS, SAMPLES, length, new)
    assert counted == pytest.approx(analytic.total, rel=0.01)


@pytest.mark.parametrize("segments", [1, 3])
def test_image_rollout_flops_match_the_compiled_engine(model, segments):
    length = 20
    settings = ImageSettings(pad_id=0, samples_per_prompt=SAMPLES, cache_segments=segments)
    ids = jnp.ones((PROMPTS, length), jnp.int32)
    args = (ids, jnp.ones((PROMPTS, length), bool), jax.random.key(0))
    counted = _counted(model, lambda m, i, k, r: sample_images(m, i, k, r, settings), *args)
    analytic = cost.image_flops(CONFIG, PROMPTS, SAMPLES, length, segments)
    assert counted == pytest.approx(analytic.total, rel=0.01)
    if segments > 1:  # fewer slots read than one loop over the whole cache
        assert analytic.decode < cost.image_flops(CONFIG, PROMPTS, SAMPLES, length, 1).decode


def test_image_segments_follow_the_engine_split():
    assert cost.image_segments(16, 4) == [(4, 4), (4, 8), (4, 12), (3, 15)]
    assert cost.image_segments(3, 4) == [(1, 1), (1, 2)]  # more segments than steps
