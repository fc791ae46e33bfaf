"""The Flax OpenCLIP port against open_clip on a tiny random ViT-H-14-family model (fp32)."""

import jax
import jax.numpy as jnp
import numpy as np
import open_clip
import pytest
import torch
from flax import nnx
from jax.sharding import PartitionSpec as P

from pairuni_jax import sharding
from pairuni_jax.models.clip import CLIP, CLIPConfig
from pairuni_jax.models.stack import RematPolicy
from tests.clip_reference import jax_clip_from, tiny_open_clip

TOL = 1e-5
PROMPTS = [
    "A cat with two horns on its head",
    "a photo of a towel and a zebra, &amp; a “quoted” café",
    " ".join(["a very long prompt"] * 30),  # > 77 tokens: truncated with EOT last
    "",
]


@pytest.fixture(scope="module")
def models():
    reference = tiny_open_clip(seed=0)
    return reference, jax_clip_from(reference, CLIPConfig.tiny())


def test_image_features_parity(models):
    reference, model = models
    pixels = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype(np.float32)
    with torch.no_grad():
        want = reference.encode_image(torch.from_numpy(pixels).permute(0, 3, 1, 2)).numpy()
    got = np.asarray(jax.jit(lambda m, x: m.encode_image(x))(model, pixels))
    assert got.shape == (2, 32)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_text_features_parity(models):
    reference, model = models
    ids = open_clip.get_tokenizer("ViT-H-14")(PROMPTS)
    with torch.no_grad():
        want = reference.encode_text(ids).numpy()
    got = np.asarray(jax.jit(lambda m, x: m.encode_text(x))(model, jnp.asarray(ids, jnp.int32)))
    assert got.shape == (len(PROMPTS), 32)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_remat_gives_the_same_gradients(models):
    reference, model = models
    rematted = jax_clip_from(reference, CLIPConfig.tiny(), remat=RematPolicy.FULL)
    pixels = np.random.default_rng(1).normal(size=(2, 224, 224, 3)).astype(np.float32)
    loss = lambda m, x: jnp.sum(m.encode_image(x) ** 2)  # noqa: E731
    g_plain = jax.grad(loss, argnums=1)(model, pixels)
    g_remat = jax.grad(loss, argnums=1)(rematted, pixels)
    np.testing.assert_allclose(np.asarray(g_remat), np.asarray(g_plain), atol=1e-6, rtol=1e-5)


def test_stacked_params_map_to_mesh_axes(mesh):
    abstract = nnx.eval_shape(lambda: CLIP(CLIPConfig.vit_h_14(), rngs=nnx.Rngs(0)))
    specs = nnx.to_pure_dict(sharding.state_shardings(nnx.state(abstract), mesh))
    blocks = specs["visual"]["transformer"]["blocks"]
    assert blocks["attn"]["qkv"]["kernel"].spec == P(None, "fsdp", None, "tensor", None)
    assert blocks["attn"]["out"]["kernel"].spec == P(None, "tensor", None, "fsdp")
    assert blocks["c_fc"]["kernel"].spec == P(None, "fsdp", "tensor")
    assert specs["text"]["token_embedding"]["embedding"].spec == P("tensor", "fsdp")
    assert abstract.visual.transformer.blocks.c_fc.kernel.shape == (32, 1280, 5120)
    params = jax.tree.leaves(nnx.state(abstract, nnx.Param))
    assert sum(x.size for x in params) == 986_109_441 - 1  # open_clip ViT-H-14 less logit_scale


def test_config_validation_and_round_trip():
    config = CLIPConfig.vit_h_14()
    assert CLIPConfig.from_dict(config.to_dict()) == config
    assert config.vision.num_tokens == 257 and config.vision.width // config.vision.heads == 80
    with pytest.raises(ValueError, match="patch_size"):
        CLIPConfig.from_dict(
            {**config.to_dict(), "vision": {**config.to_dict()["vision"], "patch_size": 15}}
        )
    with pytest.raises(ValueError, match="bad config"):
        CLIPConfig.from_dict({"embed_dim": 8})
