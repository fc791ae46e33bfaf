"""The SigLIP-L/16 vision tower of Janus-Pro (understanding path), as transformers' ``JanusVisionModel``.

Shape letters: B images, P patches (576 for 384² at patch 16), C width, N heads, D head width.
Patch embedding with bias, learned positions, pre-norm blocks (LayerNorm eps 1e-6, exact-erf GELU),
final LayerNorm; no class token and no pooling head (the checkpoint's ``attn_pool`` is unused).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pairuni_jax.models import stack
from pairuni_jax.sharding import axes, constrain

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
    image_size: int = 384
    patch_size: int = 16
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    mlp_ratio: int = 4
    layer_norm_eps: float = 1e-6

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch {self.patch_size}"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} not divisible by {self.num_heads} heads"
            )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def mlp_dim(self) -> int:
        return self.hidden_size * self.mlp_ratio

    @classmethod
    def siglip_large_patch16_384(cls) -> SiglipConfig:
        return cls()

    @classmethod
    def tiny(cls) -> SiglipConfig:
        return cls(image_size=32, patch_size=8, hidden_size=32, num_layers=2, num_heads=2)


def _dense(din: int, dout: int, names: tuple[str, str], kw: dict) -> nnx.Linear:
    return nnx.Linear(din, dout, kernel_metadata=axes(*names), bias_metadata=axes(names[1]), **kw)


def _layer_norm(dim: int, eps: float, kw: dict) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        dim, epsilon=eps, scale_metadata=axes("norm"), bias_metadata=axes("norm"), **kw
    )


class Embeddings(nnx.Module):
    def __init__(self, config: SiglipConfig, kw: dict):
        p = config.patch_size
        self.patch_embedding = nnx.Conv(
            3,
            config.hidden_size,
            (p, p),
            strides=(p, p),
            padding="VALID",
            kernel_metadata=axes(None, None, "conv_in", "embed"),
            bias_metadata=axes("embed"),
            **kw,
        )
        self.position_embedding = nnx.Embed(
            config.num_patches, config.hidden_size, embedding_metadata=axes(None, "embed"), **kw
        )

    def __call__(self, pixels: Array) -> Array:
        """pixels: [B, S, S, 3] → [B, P, C] (row-major patches plus positions)."""
        x = self.patch_embedding(pixels)
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        return x + self.position_embedding.embedding[...].astype(x.dtype)[None]


class SelfAttention(nnx.Module):
    def __init__(self, config: SiglipConfig, kw: dict):
        c = config.hidden_size
        self.num_heads = config.num_heads
        self.q_proj = _dense(c, c, ("embed", "heads"), kw)
        self.k_proj = _dense(c, c, ("embed", "heads"), kw)
        self.v_proj = _dense(c, c, ("embed", "heads"), kw)
        self.projection_layer = _dense(c, c, ("heads", "embed"), kw)

    def __call__(self, x: Array) -> Array:
        b, p, c = x.shape
        n = self.num_heads
        q, k, v = (
            proj(x).reshape(b, p, n, c // n) for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        logits = jnp.einsum("bqnd,bknd->bnqk", q, k, preferred_element_type=jnp.float32)
        probs = jax.nn.softmax(logits * (c // n) ** -0.5, axis=-1).astype(v.dtype)
        out = jnp.einsum("bnqk,bknd->bqnd", probs, v).reshape(b, p, c)
        return self.projection_layer(out)


class MLP(nnx.Module):
    def __init__(self, config: SiglipConfig, kw: dict):
        self.fc1 = _dense(config.hidden_size, config.mlp_dim, ("embed", "mlp"), kw)
        self.fc2 = _dense(config.mlp_dim, config.hidden_size, ("mlp", "embed"), kw)

    def __call__(self, x: Array) -> Array:
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class EncoderLayer(nnx.Module):
    def __init__(self, config: SiglipConfig, kw: dict):
        self.layer_norm1 = _layer_norm(config.hidden_size, config.layer_norm_eps, kw)
        self.self_attn = SelfAttention(config, kw)
        self.layer_norm2 = _layer_norm(config.hidden_size, config.layer_norm_eps, kw)
        self.mlp = MLP(config, kw)

    def __call__(self, x: Array) -> Array:
        x = x + self.self_attn(self.layer_norm1(x))
        x = x + self.mlp(self.layer_norm2(x))
        return constrain(x, "batch", "length", "embed")


class Encoder(nnx.Module):
    def __init__(self, config: SiglipConfig, kw: dict, rngs: nnx.Rngs):
        @nnx.split_rngs(splits=config.num_layers)
        @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_layers(rngs: nnx.Rngs) -> EncoderLayer:
            return EncoderLayer(config, dict(kw, rngs=rngs))

        self.layers = make_layers(rngs)


class SiglipVisionModel(nnx.Module):
    """Patch features of the last block after the final LayerNorm: [B, S, S, 3] → [B, P, C]."""

    def __init__(
        self,
        config: SiglipConfig,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        scan_layers: bool = True,
        remat: stack.RematPolicy = stack.RematPolicy.NONE,
        rngs: nnx.Rngs,
    ):
        self.config = config
        self.scan_layers = scan_layers
        self.remat = stack.RematPolicy(remat)
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.embeddings = Embeddings(config, dict(kw, rngs=rngs))
        self.encoder = Encoder(config, kw, rngs)
        self.post_layernorm = _layer_norm(
            config.hidden_size, config.layer_norm_eps, dict(kw, rngs=rngs)
        )

    def __call__(self, pixels: Array) -> Array:
        x = constrain(self.embeddings(pixels), "batch", "length", "embed")
        x = stack.scan(
            self.encoder.layers,
            x,
            lambda layer, x: layer(x),
            self.remat,
            unroll=not self.scan_layers,
        )
        return self.post_layernorm(x)
