"""OpenCLIP ViT (vision and text towers) in Flax NNX: the HPSv2 reward model's architecture.

Shape letters: B batch, L tokens (257 image tokens = CLS + 16x16 patches for ViT-H-14 at 224 px;
77 text tokens), W tower width, H heads, K head width, M MLP width, D joint embedding width.

Numerics follow open_clip (spec/hpsv2.md §2): pre-norm residual blocks, LayerNorm eps 1e-5,
exact-erf GELU, fused q|k|v projection with bias, softmax in fp32, CLS pooling + ``ln_post`` +
``proj`` for images, ``ln_final`` + end-token pooling (argmax of the ids) + ``text_projection``
for text. Matmuls take ``dtype`` inputs and accumulate into fp32 outputs
(``preferred_element_type``): exact for fp32, and for bf16 both more accurate and, on CPU, twice
as fast as bf16 outputs; the residual stream is kept in ``dtype``. Blocks are stored stacked
along a leading ``layers`` axis and applied with a scan (optionally rematerialised), which keeps
compile time flat in depth.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pairuni_jax import sharding
from pairuni_jax.models.stack import RematPolicy, scan
from pairuni_jax.sharding import axes

LN_EPS = 1e-5
ACCUMULATE = jnp.float32


def _check_tower(config: Any) -> None:
    """Every size positive, and the width split evenly over the heads."""
    for field in dataclasses.fields(config):
        if getattr(config, field.name) <= 0:
            raise ValueError(
                f"{type(config).__name__}: {field.name} must be positive, "
                f"got {getattr(config, field.name)}"
            )
    if config.width % config.heads:
        raise ValueError(
            f"{type(config).__name__}: width {config.width} does not divide by heads {config.heads}"
        )


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """Vision tower: a ViT over square ``image_size`` images cut into ``patch_size`` patches."""

    image_size: int = 224
    patch_size: int = 14
    width: int = 1280
    layers: int = 32
    heads: int = 16
    mlp_dim: int = 5120

    def __post_init__(self) -> None:
        _check_tower(self)
        if self.image_size % self.patch_size:
            raise ValueError(
                f"VisionConfig: image_size {self.image_size} is not a multiple of "
                f"patch_size {self.patch_size}"
            )

    @property
    def num_tokens(self) -> int:
        """CLS token + patch grid."""
        return 1 + (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Text tower: a causal transformer over ``context_length`` CLIP BPE token ids."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 1024
    layers: int = 24
    heads: int = 16
    mlp_dim: int = 4096

    def __post_init__(self) -> None:
        _check_tower(self)


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """An OpenCLIP ViT: both towers project to a joint ``embed_dim``."""

    embed_dim: int = 1024
    vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    text: TextConfig = dataclasses.field(default_factory=TextConfig)

    def __post_init__(self) -> None:
        if self.embed_dim <= 0:
            raise ValueError(f"CLIPConfig: embed_dim must be positive, got {self.embed_dim}")

    @classmethod
    def vit_h_14(cls) -> CLIPConfig:
        """OpenCLIP ViT-H-14, the HPSv2 / HPSv2.1 architecture (986M params)."""
        return cls()

    @classmethod
    def tiny(cls) -> CLIPConfig:
        """A 2-layer ViT-H-14-family model for tests; real image size, patch and BPE vocabulary."""
        return cls(
            embed_dim=32,
            vision=VisionConfig(width=64, layers=2, heads=4, mlp_dim=256),
            text=TextConfig(width=48, layers=2, heads=4, mlp_dim=192),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CLIPConfig:
        """Inverse of ``to_dict``; unknown or missing fields raise with their names."""
        try:
            return cls(
                embed_dim=d["embed_dim"],
                vision=VisionConfig(**d["vision"]),
                text=TextConfig(**d["text"]),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"CLIPConfig.from_dict: bad config {d!r}: {e}") from e


class Attention(nnx.Module):
    """Multi-head self-attention with a fused q|k|v projection (open_clip ``in_proj``)."""

    def __init__(self, width: int, heads: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        head_dim = width // heads
        self.qkv = nnx.Einsum(
            "blw,wthk->blthk",
            (width, 3, heads, head_dim),
            (3, heads, head_dim),
            kernel_metadata=axes("embed", None, "heads", "head_dim"),
            bias_metadata=axes(None, "heads", "head_dim"),
            dtype=dtype,
            param_dtype=param_dtype,
            preferred_element_type=ACCUMULATE,
            rngs=rngs,
        )
        self.out = nnx.Einsum(
            "blhk,hkw->blw",
            (heads, head_dim, width),
            (width,),
            kernel_metadata=axes("heads", "head_dim", "embed"),
            bias_metadata=axes("embed"),
            dtype=dtype,
            param_dtype=param_dtype,
            preferred_element_type=ACCUMULATE,
            rngs=rngs,
        )
        self.scale = head_dim**-0.5
        self.dtype = dtype

    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        """x: [B, L, W]; mask: bool[L, L] (True = attend) or None. Returns float32[B, L, W]."""
        qkv = self.qkv(x)
        q = (qkv[:, :, 0] * self.scale).astype(self.dtype)
        k, v = qkv[:, :, 1].astype(self.dtype), qkv[:, :, 2].astype(self.dtype)
        logits = jnp.einsum("bqhk,bshk->bhqs", q, k, preferred_element_type=ACCUMULATE)
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        return self.out(jnp.einsum("bhqs,bshk->bqhk", probs, v, preferred_element_type=ACCUMULATE))


class ResidualBlock(nnx.Module):
    """Pre-norm block: ``x + attn(ln_1(x))``, then ``x + c_proj(gelu(c_fc(ln_2(x))))``."""

    def __init__(
        self, width: int, heads: int, mlp_dim: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        dense = dict(preferred_element_type=ACCUMULATE, **kw)
        self.ln_1 = _layer_norm(width, **kw)
        self.attn = Attention(width, heads, **kw)
        self.ln_2 = _layer_norm(width, **kw)
        self.c_fc = nnx.Linear(
            width, mlp_dim, kernel_metadata=axes("embed", "mlp"), bias_metadata=axes("mlp"), **dense
        )
        self.c_proj = nnx.Linear(
            mlp_dim,
            width,
            kernel_metadata=axes("mlp", "embed"),
            bias_metadata=axes("embed"),
            **dense,
        )

    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        """x: [B, L, W] in the compute dtype; the residual adds run in fp32."""
        dtype = x.dtype
        x = (x + self.attn(self.ln_1(x), mask)).astype(dtype)
        h = jax.nn.gelu(self.c_fc(self.ln_2(x)), approximate=False)
        x = (x + self.c_proj(h)).astype(dtype)
        return sharding.constrain(x, "batch", "length", None)


class Transformer(nnx.Module):
    """``layers`` residual blocks with params stacked on a leading ``layers`` axis, scanned."""

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        mlp_dim: int,
        *,
        dtype: Any,
        param_dtype: Any,
        remat: RematPolicy,
        rngs: nnx.Rngs,
    ):
        @nnx.split_rngs(splits=layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(rngs: nnx.Rngs) -> ResidualBlock:
            return ResidualBlock(
                width, heads, mlp_dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs
            )

        self.blocks = make_blocks(rngs)
        self.remat = RematPolicy(remat)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """x: [B, L, W]; mask: bool[L, L] or None. Returns [B, L, W]."""
        return scan(self.blocks, x, lambda block, x: block(x, mask), self.remat)


class VisionTower(nnx.Module):
    """ViT: patch conv (no bias), CLS token, positions, ``ln_pre``, blocks, ``ln_post``, proj."""

    def __init__(
        self,
        config: VisionConfig,
        embed_dim: int,
        *,
        dtype: Any,
        param_dtype: Any,
        remat: RematPolicy,
        rngs: nnx.Rngs,
    ):
        c = config
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        scale = c.width**-0.5
        self.conv1 = nnx.Conv(
            3,
            c.width,
            kernel_size=(c.patch_size,) * 2,
            strides=(c.patch_size,) * 2,
            padding="VALID",
            use_bias=False,
            kernel_metadata=axes(None, None, "conv_in", "conv_out"),
            preferred_element_type=ACCUMULATE,
            **kw,
        )
        self.class_embedding = nnx.Param(
            scale * jax.random.normal(rngs.params(), (c.width,), param_dtype), **axes("embed")
        )
        self.positional_embedding = nnx.Param(
            scale * jax.random.normal(rngs.params(), (c.num_tokens, c.width), param_dtype),
            **axes("length", "embed"),
        )
        self.ln_pre = _layer_norm(c.width, **kw)
        self.transformer = Transformer(c.width, c.layers, c.heads, c.mlp_dim, remat=remat, **kw)
        self.ln_post = _layer_norm(c.width, **kw)
        self.proj = nnx.Param(
            scale * jax.random.normal(rngs.params(), (c.width, embed_dim), param_dtype),
            **axes("embed", None),
        )
        self.dtype = dtype

    def __call__(self, pixels: jax.Array) -> jax.Array:
        """pixels: float[B, S, S, 3], CLIP-normalised (``rewards.preprocess``) -> float32[B, D]."""
        x = self.conv1(pixels.astype(self.dtype))
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        cls = jnp.broadcast_to(
            self.class_embedding[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1])
        )
        x = jnp.concatenate([cls, x], axis=1) + self.positional_embedding[...].astype(x.dtype)
        x = sharding.constrain(self.ln_pre(x), "batch", "length", None)
        x = self.ln_post(self.transformer(x)[:, 0])
        return _project(x, self.proj[...])


class TextTower(nnx.Module):
    """Causal transformer: token + position embeddings, blocks, ``ln_final``, end-token pooling."""

    def __init__(
        self,
        config: TextConfig,
        embed_dim: int,
        *,
        dtype: Any,
        param_dtype: Any,
        remat: RematPolicy,
        rngs: nnx.Rngs,
    ):
        c = config
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.token_embedding = nnx.Embed(
            c.vocab_size,
            c.width,
            embedding_metadata=axes("vocab", "embed"),
            embedding_init=nnx.initializers.normal(0.02),
            **kw,
        )
        self.positional_embedding = nnx.Param(
            0.01 * jax.random.normal(rngs.params(), (c.context_length, c.width), param_dtype),
            **axes("length", "embed"),
        )
        self.transformer = Transformer(c.width, c.layers, c.heads, c.mlp_dim, remat=remat, **kw)
        self.ln_final = _layer_norm(c.width, **kw)
        self.text_projection = nnx.Param(
            c.width**-0.5 * jax.random.normal(rngs.params(), (c.width, embed_dim), param_dtype),
            **axes("embed", None),
        )
        self.context_length = c.context_length

    def __call__(self, ids: jax.Array) -> jax.Array:
        """ids: int32[B, context_length], SOT ... EOT then zeros. Returns float32[B, D].

        Pools the token at ``argmax(ids)``: EOT (49407) is the largest id in the vocabulary.
        """
        if ids.shape[-1] != self.context_length:
            raise ValueError(
                f"TextTower: ids must have {self.context_length} positions, got shape {ids.shape}"
            )
        x = self.token_embedding(ids)
        x = x + self.positional_embedding[...].astype(x.dtype)
        x = sharding.constrain(x, "batch", "length", None)
        causal = jnp.tril(jnp.ones((self.context_length,) * 2, dtype=bool))
        x = self.ln_final(self.transformer(x, causal))
        x = jnp.take_along_axis(x, jnp.argmax(ids, axis=-1)[:, None, None], axis=1)[:, 0]
        return _project(x, self.text_projection[...])


class CLIP(nnx.Module):
    """OpenCLIP ViT: ``encode_image`` and ``encode_text`` give unnormalised [B, D] features."""

    def __init__(
        self,
        config: CLIPConfig,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        remat: RematPolicy = RematPolicy.NONE,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, remat=remat, rngs=rngs)
        self.config = config
        self.visual = VisionTower(config.vision, config.embed_dim, **kw)
        self.text = TextTower(config.text, config.embed_dim, **kw)

    def encode_image(self, pixels: jax.Array) -> jax.Array:
        """pixels: float[B, S, S, 3] CLIP-normalised, S = vision.image_size -> float32[B, D]."""
        size = self.config.vision.image_size
        if pixels.shape[1:] != (size, size, 3):
            raise ValueError(
                f"CLIP.encode_image: expected pixels [B, {size}, {size}, 3], got {pixels.shape}"
            )
        return self.visual(pixels)

    def encode_text(self, ids: jax.Array) -> jax.Array:
        """ids: int32[B, 77] CLIP BPE ids. Returns float32[B, D]."""
        return self.text(ids)


def _layer_norm(width: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        width,
        epsilon=LN_EPS,
        scale_metadata=axes("norm"),
        bias_metadata=axes("norm"),
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


def _project(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [B, W] @ w [W, D] in x's dtype, fp32 result."""
    return jnp.dot(x, w.astype(x.dtype), preferred_element_type=ACCUMULATE)
