"""The in-graph HPS reward: preprocessing vs hpsv2's transform, score parity with open_clip,
precomputed vs in-graph text features, gradients, and the sharded path."""

import jax
import jax.numpy as jnp
import numpy as np
import open_clip
import pytest
from matplotlib import cbook
from PIL import Image

from pairuni_jax import sharding
from pairuni_jax.models.clip import CLIPConfig
from pairuni_jax.rewards import registry
from pairuni_jax.rewards.hps import hps_score, prompt_features
from pairuni_jax.rewards.preprocess import janus_to_clip
from pairuni_jax.verify.hps_reference import hps_preprocess, janus_uint8, reference_hps
from tests.clip_reference import jax_clip_from, tiny_open_clip

PREPROCESS_TOL = 1e-4
SCORE_TOL = 1e-5
PROMPTS = ["A cat with two horns on its head", "a photo of a towel and a zebra"]


def photograph() -> np.ndarray:
    """A real photograph, uint8[512, 600, 3] (public domain; shipped inside matplotlib)."""
    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return np.asarray(Image.open(path).convert("RGB"))


def as_janus_pixels(image_u8: np.ndarray) -> np.ndarray:
    """Decoder-style floats in [-1, 1] whose Janus uint8 image is ``image_u8`` (bin centres)."""
    pixels = (image_u8.astype(np.float32) + 0.5) / 127.5 - 1.0
    np.testing.assert_array_equal(janus_uint8(pixels), image_u8)
    return pixels


@pytest.fixture(scope="module")
def models():
    reference = tiny_open_clip(seed=1)
    return reference, jax_clip_from(reference, CLIPConfig.tiny())


@pytest.fixture(scope="module")
def token_ids():
    return open_clip.get_tokenizer("ViT-H-14")(PROMPTS).numpy().astype(np.int32)


@pytest.mark.parametrize("crop", ["janus_384", "full_non_square"])
def test_preprocess_parity_photograph(crop):
    image = photograph()
    if crop == "janus_384":
        image = image[64:448, 108:492]
    pixels = as_janus_pixels(image)
    want = hps_preprocess(janus_uint8(pixels)).permute(1, 2, 0).numpy()
    got = np.asarray(jax.jit(janus_to_clip)(pixels[None]))[0]
    assert got.shape == (224, 224, 3)
    np.testing.assert_allclose(got, want, atol=PREPROCESS_TOL, rtol=0)


def test_preprocess_parity_noise():
    pixels = np.random.default_rng(0).uniform(-1.05, 1.05, (2, 384, 384, 3)).astype(np.float32)
    want = np.stack([hps_preprocess(janus_uint8(p)).permute(1, 2, 0).numpy() for p in pixels])
    got = np.asarray(jax.jit(janus_to_clip)(pixels))
    np.testing.assert_allclose(got, want, atol=PREPROCESS_TOL, rtol=0)


def test_preprocess_without_quantize_is_continuous():
    pixels = np.random.default_rng(1).uniform(-1, 1, (1, 384, 384, 3)).astype(np.float32)
    exact = janus_to_clip(pixels, quantize=True)
    smooth = janus_to_clip(pixels, quantize=False)
    bias = float(jnp.mean(smooth - exact))
    assert 0.003 < bias < 0.012  # half a uint8 level: 0.5 / 255 / std ~ 0.0073


def test_hps_score_parity(models, token_ids):
    reference, model = models
    photo = as_janus_pixels(photograph()[64:448, 108:492])
    noise = np.random.default_rng(2).uniform(-1, 1, (384, 384, 3)).astype(np.float32)
    pixels = np.stack([photo, noise])
    want = reference_hps(reference, pixels, token_ids)
    from_ids = jax.jit(hps_score)(model, pixels, text_ids=token_ids)
    features = jax.jit(prompt_features)(model, token_ids)
    from_features = jax.jit(hps_score)(model, pixels, text_features=features)
    assert from_ids.dtype == jnp.float32 and from_ids.shape == (2,)
    np.testing.assert_allclose(np.asarray(from_ids), want, atol=SCORE_TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(from_features), want, atol=SCORE_TOL, rtol=0)


def test_hps_score_needs_exactly_one_text_input(models, token_ids):
    _, model = models
    pixels = jnp.zeros((2, 384, 384, 3))
    with pytest.raises(ValueError, match="exactly one"):
        hps_score(model, pixels)
    with pytest.raises(ValueError, match="exactly one"):
        hps_score(model, pixels, text_features=jnp.zeros((2, 32)), text_ids=token_ids)


def test_hps_gradient_wrt_pixels_is_finite(models, token_ids):
    _, model = models
    pixels = np.random.default_rng(3).uniform(-0.9, 0.9, (2, 384, 384, 3)).astype(np.float32)
    features = prompt_features(model, token_ids)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(hps_score(model, x, text_features=features))))(pixels)
    grad = np.asarray(grad)
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0


def test_sharded_score_and_registry(models, token_ids, mesh):
    _, model = models
    pixels = np.random.default_rng(4).uniform(-1, 1, (8, 384, 384, 3)).astype(np.float32)
    ids = np.repeat(token_ids, 4, axis=0)
    want = jax.jit(hps_score)(model, pixels, text_ids=ids)
    sharded = sharding.shard_module(jax_clip_from(models[0], CLIPConfig.tiny()), mesh)
    weights = registry.RewardWeights(generation={"hps": 2.0})

    @jax.jit
    def generation(model, pixels, ids):
        return registry.generation_reward(
            weights, registry.GenerationInputs(model, pixels, None, ids)
        )

    with jax.set_mesh(mesh):
        total, parts = generation(sharded, pixels, ids)
    np.testing.assert_allclose(np.asarray(parts["hps"]), np.asarray(want), atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.asarray(total), 2 * np.asarray(want), atol=2e-6, rtol=0)


def test_bf16_compute_stays_close_to_fp32(models, token_ids):
    reference, model = models
    bf16 = jax_clip_from(reference, CLIPConfig.tiny(), dtype=jnp.bfloat16)
    pixels = np.random.default_rng(5).uniform(-1, 1, (2, 384, 384, 3)).astype(np.float32)
    want = jax.jit(hps_score)(model, pixels, text_ids=token_ids)
    got = jax.jit(hps_score)(bf16, pixels, text_ids=token_ids)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-2, rtol=0)
