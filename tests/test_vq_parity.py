"""Parity of ``pairuni_jax.models.vq`` with transformers' ``JanusVQVAE`` (fp32, CPU).

A tiny random ``JanusVQVAE`` with every parameter perturbed is copied into ``VQModel`` with the
naming rule of the ``vq.py`` docstring (same path, leaf renamed, conv kernels OIHW -> HWIO).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from transformers.models.janus.configuration_janus import JanusVQVAEConfig
from transformers.models.janus.modeling_janus import JanusVQVAE

from pairuni_jax import sharding
from pairuni_jax.models.stack import RematPolicy
from pairuni_jax.models.vq import VQConfig, VQModel, to_uint8

TOL = 1e-4


def hf_config(cfg: VQConfig) -> JanusVQVAEConfig:
    return JanusVQVAEConfig(
        embed_dim=cfg.embed_dim,
        num_embeddings=cfg.num_embeddings,
        latent_channels=cfg.latent_channels,
        in_channels=cfg.in_channels,
        base_channels=cfg.base_channels,
        channel_multiplier=list(cfg.channel_multiplier),
        num_res_blocks=cfg.num_res_blocks,
        out_channels=cfg.out_channels,
        num_patches=cfg.grid_size,
    )


KERNEL_AXES = (2, 3, 1, 0)  # torch Conv2d OIHW -> Flax HWIO


def flax_path(hf_key: str, ndim: int) -> tuple[str | int, ...]:
    """HF ``JanusVQVAE`` key -> Flax param path, by the naming rule of ``vq.py``."""
    *parents, leaf = hf_key.split(".")
    path = tuple(int(p) if p.isdigit() else p for p in parents)
    if leaf == "bias":
        name = "bias"
    elif path == ("quantize", "embedding"):
        name = "embedding"
    elif ndim == 4:
        name = "kernel"
    else:
        name = "scale"
    return path + (name,)


def flax_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape[i] for i in KERNEL_AXES) if len(shape) == 4 else tuple(shape)


def flax_shapes(model: nnx.Module) -> dict[tuple, tuple[int, ...]]:
    return {tuple(p): tuple(v.shape) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def load_hf(model: VQModel, hf: JanusVQVAE) -> None:
    """Copies the HF weights into ``model``; every key must match a param of equal shape."""
    shapes = flax_shapes(model)
    state = nnx.state(model, nnx.Param)
    pure = nnx.to_pure_dict(state)
    loaded = set()
    for key, tensor in hf.state_dict().items():
        array = tensor.detach().numpy()
        if array.ndim == 4:
            array = array.transpose(KERNEL_AXES)
        path = flax_path(key, array.ndim)
        assert array.shape == shapes[path], (key, path)
        loaded.add(path)
        node = pure
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = jnp.asarray(array)
    assert loaded == set(shapes)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)


def nhwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def tiny():
    """(config, perturbed HF model, Flax model holding the same weights)."""
    cfg = VQConfig.tiny()
    torch.manual_seed(0)
    hf = JanusVQVAE(hf_config(cfg)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model = VQModel(cfg, rngs=nnx.Rngs(0))
    load_hf(model, hf)
    return cfg, hf, model


decode = nnx.jit(lambda m, t: m.decode_tokens(t))


def test_vq16_param_names_shapes_and_counts_parity():
    """Every HF key of the full VQ-16 maps onto a Flax param of equal shape; spec §1 counts."""
    cfg = VQConfig.vq16()
    with torch.device("meta"):
        hf = JanusVQVAE(hf_config(cfg))
    model = nnx.eval_shape(lambda: VQModel(cfg, rngs=nnx.Rngs(0)))
    shapes = flax_shapes(model)
    mapped = {flax_path(k, t.ndim): flax_shape(t.shape) for k, t in hf.state_dict().items()}
    assert len(mapped) == len(hf.state_dict()) == 343
    assert mapped == shapes

    counts: dict[str, int] = {}
    for path, shape in shapes.items():
        counts[path[0]] = counts.get(path[0], 0) + int(np.prod(shape))
    assert round(counts["encoder"] / 1e6, 2) == 29.30
    assert round(counts["decoder"] / 1e6, 2) == 42.45
    # spec §1 also counts the original's unused `codebook_used` buffer (65536 entries).
    rest = counts["quantize"] + counts["quant_conv"] + counts["post_quant_conv"]
    assert round((rest + 65536) / 1e6, 2) == 0.20
    assert (counts["encoder"], counts["decoder"], rest) == (29_298_176, 42_449_795, 135_432)


def test_decode_parity(tiny):
    cfg, hf, model = tiny
    tokens = np.random.default_rng(0).integers(0, cfg.num_embeddings, (2, cfg.num_tokens))
    with torch.no_grad():
        ref = nhwc(hf.decode(torch.from_numpy(tokens)))
    out = np.asarray(decode(model, jnp.asarray(tokens, jnp.int32)))
    assert out.shape == (2, cfg.image_size, cfg.image_size, 3)
    diff = float(np.abs(out - ref).max())
    print(f"decode max|diff| = {diff:.3e} (output max|x| = {np.abs(ref).max():.2f})")
    assert diff <= TOL


def test_codebook_lookup_raster_order_parity(tiny):
    cfg, hf, model = tiny
    tokens = np.random.default_rng(1).integers(0, cfg.num_embeddings, (2, cfg.num_tokens))
    with torch.no_grad():
        ref = nhwc(hf.quantize.get_codebook_entry(torch.from_numpy(tokens)))
    out = np.asarray(model.codebook_lookup(jnp.asarray(tokens, jnp.int32)))
    np.testing.assert_allclose(out, ref, atol=1e-6, rtol=0)


def test_encode_parity(tiny):
    """Latents vs HF ``quant_conv(encoder(x))``; tokens vs the original normalised argmin."""
    cfg, hf, model = tiny
    s = cfg.image_size
    pixels = np.random.default_rng(2).uniform(-1, 1, (2, s, s, 3)).astype(np.float32)
    with torch.no_grad():
        latents_ref = hf.quant_conv(hf.encoder(torch.from_numpy(pixels).permute(0, 3, 1, 2)))
        z = F.normalize(latents_ref.permute(0, 2, 3, 1).reshape(-1, cfg.embed_dim), dim=-1)
        e = F.normalize(hf.quantize.embedding.weight, dim=-1)
        dist = (z**2).sum(1, keepdim=True) + (e**2).sum(1) - 2 * z @ e.T
        tokens_ref = dist.argmin(1).reshape(2, -1).numpy()
    latents = np.asarray(nnx.jit(lambda m, x: m.encode_latents(x))(model, jnp.asarray(pixels)))
    diff = float(np.abs(latents - nhwc(latents_ref)).max())
    print(f"encode latents max|diff| = {diff:.3e}")
    assert diff <= TOL
    tokens = np.asarray(nnx.jit(lambda m, x: m.encode(x))(model, jnp.asarray(pixels)))
    assert tokens.dtype == np.int32 and tokens.shape == (2, cfg.num_tokens)
    assert len(np.unique(tokens_ref)) > 4  # the comparison is not between constant maps
    np.testing.assert_array_equal(tokens, tokens_ref)


def test_to_uint8_parity():
    """Against the original numpy post-processing (assignment into a uint8 array truncates)."""
    rng = np.random.default_rng(3)
    exact = np.arange(256, dtype=np.float32) / 255 * 2 - 1  # values landing on integers
    x = np.concatenate(
        [
            rng.normal(0, 0.8, 4000).astype(np.float32),
            exact,
            np.nextafter(exact, -2),
            np.float32([-1, 1, -1.5, 1.5, -1e-8, 0, 0.999999]),
        ]
    )
    ref = np.zeros(x.shape, np.uint8)
    ref[...] = np.clip((x + 1) / 2 * 255, 0, 255)
    np.testing.assert_array_equal(np.asarray(to_uint8(jnp.asarray(x))), ref)


def test_decode_sharded_parity(tiny, mesh):
    cfg, _, model = tiny
    tokens = jnp.asarray(
        np.random.default_rng(4).integers(0, cfg.num_embeddings, (8, cfg.num_tokens)), jnp.int32
    )
    expected = np.asarray(decode(model, tokens))
    sharded = sharding.shard_module(model, mesh)
    batch = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    with jax.set_mesh(mesh):
        out = decode(sharded, jax.device_put(tokens, batch))
    assert out.sharding.is_equivalent_to(NamedSharding(mesh, PartitionSpec(("data", "fsdp"))), 4)
    # Equal up to fp32 summation order (per-device batch 1 vs batch 8 on one device).
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5, rtol=1e-5)


def test_remat_and_bf16_parity(tiny):
    """``remat`` changes neither values nor gradients; bf16 compute stays close to fp32."""
    cfg, hf, model = tiny
    tokens = jnp.asarray(
        np.random.default_rng(5).integers(0, cfg.num_embeddings, (2, cfg.num_tokens)), jnp.int32
    )
    state = nnx.state(model, nnx.Param)

    def variant(**kwargs) -> VQModel:
        m = VQModel(cfg, rngs=nnx.Rngs(1), **kwargs)
        nnx.update(m, state)
        return m

    def loss(m: VQModel) -> jax.Array:
        return jnp.mean(m.decode_tokens(tokens).astype(jnp.float32) ** 2)

    grads = nnx.jit(nnx.grad(loss))(model)
    grads_remat = nnx.jit(nnx.grad(loss))(variant(remat=RematPolicy.FULL))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
        nnx.to_pure_dict(grads),
        nnx.to_pure_dict(grads_remat),
    )

    ref = np.asarray(decode(model, tokens))
    out = decode(variant(dtype=jnp.bfloat16), tokens)
    assert out.dtype == jnp.bfloat16
    rel = float(np.abs(np.asarray(out, np.float32) - ref).max() / np.abs(ref).max())
    print(f"bf16 decode max|diff| / max|ref| = {rel:.3e}")
    assert rel < 0.05


def test_config_dict_roundtrip_and_validation():
    for cfg in (VQConfig.vq16(), VQConfig.tiny()):
        assert VQConfig.from_dict(cfg.to_dict()) == cfg
    assert (VQConfig.vq16().grid_size, VQConfig.vq16().num_tokens) == (24, 576)
    assert (VQConfig.tiny().grid_size, VQConfig.tiny().num_tokens) == (4, 16)
    with pytest.raises(ValueError, match="unknown keys"):
        VQConfig.from_dict({"embed_dim": 8, "codebook": 3})
    with pytest.raises(ValueError, match="num_groups"):
        VQConfig(base_channels=48)
    with pytest.raises(ValueError, match="image_size"):
        VQConfig(image_size=100)
    with pytest.raises(ValueError, match="tokens must be"):
        VQModel(VQConfig.tiny(), rngs=nnx.Rngs(0)).decode_tokens(jnp.zeros((1, 15), jnp.int32))
