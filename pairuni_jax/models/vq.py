"""VQ-16 image tokenizer / decoder of Janus-Pro (the LlamaGen ``VQModel``) as Flax NNX modules.

Spec: ``spec/janus.md`` §5.3 (decode to pixels) and §6 (structure). Images are NHWC, convolution
kernels HWIO. Sub-module names follow transformers' ``JanusVQVAE`` exactly, so a checkpoint key
maps to a parameter path mechanically: drop ``model.vqmodel.``, then rename the leaf ``weight`` to
``kernel`` (convolutions, ``transpose(2, 3, 1, 0)``), ``scale`` (GroupNorm) or ``embedding`` (the
codebook); ``bias`` stays ``bias``. Example: ``decoder.up.0.block.1.conv2.weight`` ->
``decoder.up[0].block[1].conv2.kernel``.

Shape letters: B batch, S image side in pixels, g token-grid side (S / downsample_factor),
N = g * g tokens, C channels, D = ``embed_dim`` (codebook width).

The decoder's ``up[0]`` is the lowest-resolution level (transformers appends the levels in
reversed order); ``encoder.down[0]`` is the highest-resolution one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pairuni_jax import sharding
from pairuni_jax.models.stack import RematPolicy, rematerialised


@dataclasses.dataclass(frozen=True)
class VQConfig:
    """Hyper-parameters of the VQ model (defaults: Janus-Pro's VQ-16, identical for 1B and 7B).

    Attributes:
        embed_dim: codebook width D (the quantised latent channels).
        num_embeddings: codebook rows (image vocabulary size).
        latent_channels: channels at the encoder output / decoder input ("z_channels").
        in_channels: image channels entering the encoder.
        base_channels: channels of the highest-resolution level.
        channel_multiplier: per-level channel multipliers, highest resolution first; the number
            of levels fixes the downsampling factor ``2 ** (levels - 1)``.
        num_res_blocks: ResNet blocks per encoder level (the decoder has one more per level).
        out_channels: image channels leaving the decoder.
        num_groups: GroupNorm groups (every channel count must divide by it).
        image_size: image side S in pixels.
        norm_eps: GroupNorm epsilon.
    """

    embed_dim: int = 8
    num_embeddings: int = 16384
    latent_channels: int = 256
    in_channels: int = 3
    base_channels: int = 128
    channel_multiplier: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    out_channels: int = 3
    num_groups: int = 32
    image_size: int = 384
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_multiplier", tuple(self.channel_multiplier))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name != "channel_multiplier" and not value > 0:
                raise ValueError(f"VQConfig.{field.name} must be positive, got {value!r}")
        if not self.channel_multiplier or min(self.channel_multiplier) <= 0:
            raise ValueError(
                f"VQConfig.channel_multiplier must be non-empty positive ints, "
                f"got {self.channel_multiplier}"
            )
        for mult in self.channel_multiplier:
            if (self.base_channels * mult) % self.num_groups:
                raise ValueError(
                    f"VQConfig: channels base_channels*{mult} = {self.base_channels * mult} "
                    f"do not divide by num_groups={self.num_groups}"
                )
        if self.image_size % self.downsample_factor:
            raise ValueError(
                f"VQConfig.image_size={self.image_size} must divide by the downsample factor "
                f"{self.downsample_factor}"
            )

    @property
    def downsample_factor(self) -> int:
        """Pixels per token along one side."""
        return 2 ** (len(self.channel_multiplier) - 1)

    @property
    def grid_size(self) -> int:
        """Token-grid side g (24 for Janus-Pro)."""
        return self.image_size // self.downsample_factor

    @property
    def num_tokens(self) -> int:
        """Tokens per image N = g * g (576 for Janus-Pro)."""
        return self.grid_size**2

    @classmethod
    def vq16(cls) -> VQConfig:
        """Janus-Pro's VQ-16 (384x384 images, 24x24 = 576 tokens, codebook 16384 x 8)."""
        return cls()

    @classmethod
    def tiny(cls) -> VQConfig:
        """Test size: 32x32 images, 4x4 = 16 tokens, codebook 64 x 8."""
        return cls(
            num_embeddings=64,
            latent_channels=32,
            base_channels=32,
            channel_multiplier=(1, 1, 2, 2),
            num_res_blocks=1,
            image_size=32,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``config.json``)."""
        out = dataclasses.asdict(self)
        out["channel_multiplier"] = list(self.channel_multiplier)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VQConfig:
        """Inverse of ``to_dict``; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"VQConfig.from_dict: unknown keys {unknown}; expected a subset of {sorted(known)}"
            )
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class _LayerFactory:
    """Builds the convolutions and norms of one model with shared dtypes, metadata and RNGs."""

    config: VQConfig
    dtype: Any
    param_dtype: Any
    rngs: nnx.Rngs

    def conv(
        self, c_in: int, c_out: int, kernel: int, *, stride: int = 1, padding: int = 0
    ) -> nnx.Conv:
        """``kernel x kernel`` convolution with bias; ``padding`` zero pixels on every side."""
        return nnx.Conv(
            c_in,
            c_out,
            (kernel, kernel),
            strides=stride,
            padding=((padding, padding), (padding, padding)),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            rngs=self.rngs,
            kernel_metadata=sharding.axes(None, None, "conv_in", "conv_out"),
            bias_metadata=sharding.axes("conv_out"),
        )

    def norm(self, channels: int) -> nnx.GroupNorm:
        """GroupNorm with statistics in fp32 (two-pass variance, as torch)."""
        return nnx.GroupNorm(
            channels,
            num_groups=self.config.num_groups,
            epsilon=self.config.norm_eps,
            use_fast_variance=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            rngs=self.rngs,
            scale_metadata=sharding.axes("norm"),
            bias_metadata=sharding.axes("norm"),
        )


class ResnetBlock(nnx.Module):
    """``x + conv2(swish(norm2(conv1(swish(norm1(x))))))``; 1x1 ``nin_shortcut`` if C changes."""

    def __init__(self, layers: _LayerFactory, c_in: int, c_out: int):
        self.norm1 = layers.norm(c_in)
        self.conv1 = layers.conv(c_in, c_out, 3, padding=1)
        self.norm2 = layers.norm(c_out)
        self.conv2 = layers.conv(c_out, c_out, 3, padding=1)
        self.nin_shortcut = layers.conv(c_in, c_out, 1) if c_in != c_out else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, H, W, c_in] -> [B, H, W, c_out]."""
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nnx.Module):
    """Single-head self-attention over all H*W positions and all C channels, residual."""

    def __init__(self, layers: _LayerFactory, channels: int):
        self.norm = layers.norm(channels)
        self.q = layers.conv(channels, channels, 1)
        self.k = layers.conv(channels, channels, 1)
        self.v = layers.conv(channels, channels, 1)
        self.proj_out = layers.conv(channels, channels, 1)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, H, W, C] -> [B, H, W, C]; logits scaled by C**-0.5, softmax in fp32."""
        b, height, width, c = x.shape
        h = self.norm(x)
        q, k, v = (proj(h).reshape(b, height * width, c) for proj in (self.q, self.k, self.v))
        logits = jnp.einsum("bqc,bkc->bqk", q, k, preferred_element_type=jnp.float32)
        weights = jax.nn.softmax(logits * c**-0.5, axis=-1).astype(v.dtype)
        out = jnp.einsum("bqk,bkc->bqc", weights, v).reshape(b, height, width, c)
        return x + self.proj_out(out)


class Downsample(nnx.Module):
    """Zero-pad one pixel at the bottom and right, then 3x3 stride-2 convolution: side / 2."""

    def __init__(self, layers: _LayerFactory, channels: int):
        self.conv = layers.conv(channels, channels, 3, stride=2)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, H, W, C] -> [B, H/2, W/2, C]."""
        return self.conv(jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))))


class Upsample(nnx.Module):
    """Nearest-neighbour x2, then 3x3 convolution: side * 2."""

    def __init__(self, layers: _LayerFactory, channels: int):
        self.conv = layers.conv(channels, channels, 3, padding=1)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, H, W, C] -> [B, 2H, 2W, C]."""
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class MidBlock(nnx.Module):
    """ResNet, attention, ResNet at constant channels."""

    def __init__(self, layers: _LayerFactory, channels: int):
        self.block_1 = ResnetBlock(layers, channels, channels)
        self.attn_1 = AttnBlock(layers, channels)
        self.block_2 = ResnetBlock(layers, channels, channels)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, H, W, C] -> [B, H, W, C]."""
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nnx.Module):
    """One resolution level: ResNet blocks, each followed by attention when the level has it,
    then ``downsample`` (encoder) or ``upsample`` (decoder) unless it is the last level."""

    def __init__(
        self,
        layers: _LayerFactory,
        c_in: int,
        c_out: int,
        num_blocks: int,
        *,
        with_attention: bool,
        downsample: bool = False,
        upsample: bool = False,
    ):
        channels = [c_in] + [c_out] * num_blocks
        self.block = nnx.List(
            [ResnetBlock(layers, channels[i], channels[i + 1]) for i in range(num_blocks)]
        )
        self.attn = nnx.List(
            [AttnBlock(layers, c_out) for _ in range(num_blocks)] if with_attention else []
        )
        self.downsample = Downsample(layers, c_out) if downsample else None
        self.upsample = Upsample(layers, c_out) if upsample else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, H, W, c_in] -> [B, H', W', c_out]: H/2 after ``downsample``, 2H after
        ``upsample``, H without either."""
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        for resample in (self.downsample, self.upsample):
            if resample is not None:
                x = resample(x)
        return x


def _call_level(level: Level, x: jax.Array) -> jax.Array:
    return level(x)


class Encoder(nnx.Module):
    """Pixels [B, S, S, in_channels] -> latents [B, g, g, latent_channels]."""

    def __init__(self, layers: _LayerFactory, *, remat: RematPolicy = RematPolicy.NONE):
        cfg = layers.config
        widths = [cfg.base_channels * m for m in cfg.channel_multiplier]
        last = len(widths) - 1
        self.remat = RematPolicy(remat)
        self.conv_in = layers.conv(cfg.in_channels, widths[0], 3, padding=1)
        self.down = nnx.List(
            [
                Level(
                    layers,
                    widths[max(i - 1, 0)],
                    widths[i],
                    cfg.num_res_blocks,
                    with_attention=i == last,
                    downsample=i != last,
                )
                for i in range(len(widths))
            ]
        )
        self.mid = MidBlock(layers, widths[-1])
        self.norm_out = layers.norm(widths[-1])
        self.conv_out = layers.conv(widths[-1], cfg.latent_channels, 3, padding=1)

    def __call__(self, x: jax.Array) -> jax.Array:
        run = rematerialised(_call_level, self.remat)
        x = self.conv_in(x)
        for level in self.down:
            x = run(level, x)
        x = self.mid(x)
        return self.conv_out(jax.nn.silu(self.norm_out(x)))


class Decoder(nnx.Module):
    """Latents [B, g, g, latent_channels] -> pixels [B, S, S, out_channels]."""

    def __init__(self, layers: _LayerFactory, *, remat: RematPolicy = RematPolicy.NONE):
        cfg = layers.config
        # Lowest resolution first, as transformers stores them.
        widths = [cfg.base_channels * m for m in reversed(cfg.channel_multiplier)]
        last = len(widths) - 1
        self.remat = RematPolicy(remat)
        self.conv_in = layers.conv(cfg.latent_channels, widths[0], 3, padding=1)
        self.mid = MidBlock(layers, widths[0])
        self.up = nnx.List(
            [
                Level(
                    layers,
                    widths[max(i - 1, 0)],
                    widths[i],
                    cfg.num_res_blocks + 1,
                    with_attention=i == 0,
                    upsample=i != last,
                )
                for i in range(len(widths))
            ]
        )
        self.norm_out = layers.norm(widths[-1])
        self.conv_out = layers.conv(widths[-1], cfg.out_channels, 3, padding=1)

    def __call__(self, z: jax.Array) -> jax.Array:
        run = rematerialised(_call_level, self.remat)
        x = self.mid(self.conv_in(z))
        for level in self.up:
            x = run(level, x)
        return self.conv_out(jax.nn.silu(self.norm_out(x)))


def _l2_normalize(x: jax.Array) -> jax.Array:
    """``x / max(||x||_2, 1e-12)`` over the last axis, as ``torch.nn.functional.normalize``."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class VectorQuantizer(nnx.Module):
    """The codebook (``embedding``: [num_embeddings, D]) and nearest-entry search."""

    def __init__(self, config: VQConfig, *, param_dtype: Any, rngs: nnx.Rngs):
        self.embedding = nnx.Embed(
            config.num_embeddings,
            config.embed_dim,
            param_dtype=param_dtype,
            rngs=rngs,
            embedding_metadata=sharding.axes("vocab", None),
        )

    def lookup(self, tokens: jax.Array) -> jax.Array:
        """tokens: int32[...] -> float32[..., D], L2-normalised codebook rows."""
        rows = jnp.take(self.embedding.embedding[...], tokens, axis=0)
        return _l2_normalize(rows.astype(jnp.float32))

    def nearest(self, latents: jax.Array) -> jax.Array:
        """latents: [..., D] -> int32[...], index of the nearest codebook row.

        Both sides are L2-normalised first and the squared distance is expanded as
        ``|z|^2 + |e|^2 - 2 z.e`` in fp32 (LlamaGen ``VectorQuantizer`` with ``l2_norm=True``).
        """
        z = _l2_normalize(latents.astype(jnp.float32))
        e = _l2_normalize(self.embedding.embedding[...].astype(jnp.float32))
        cross = jnp.einsum("...d,nd->...n", z, e, precision=jax.lax.Precision.HIGHEST)
        dist = jnp.sum(z**2, axis=-1, keepdims=True) + jnp.sum(e**2, axis=-1) - 2 * cross
        return jnp.argmin(dist, axis=-1).astype(jnp.int32)


class VQModel(nnx.Module):
    """Janus-Pro's VQ image tokenizer: ``encoder``, ``quant_conv``, ``quantize``,
    ``post_quant_conv``, ``decoder`` (names as transformers' ``JanusVQVAE``).

    ``dtype`` is the compute dtype (bf16 on accelerators); GroupNorm statistics, attention
    softmax and all codebook math run in fp32 regardless. ``remat`` applies to every resolution
    level of the encoder and decoder (saves activation memory at 384x384 when differentiating
    through the decoder).
    """

    def __init__(
        self,
        config: VQConfig,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        remat: RematPolicy = RematPolicy.NONE,
        rngs: nnx.Rngs,
    ):
        self.config = config
        layers = _LayerFactory(config, dtype, param_dtype, rngs)
        self.encoder = Encoder(layers, remat=remat)
        self.quantize = VectorQuantizer(config, param_dtype=param_dtype, rngs=rngs)
        self.quant_conv = layers.conv(config.latent_channels, config.embed_dim, 1)
        self.post_quant_conv = layers.conv(config.embed_dim, config.latent_channels, 1)
        self.decoder = Decoder(layers, remat=remat)

    def _check_tokens(self, tokens: jax.Array) -> None:
        if tokens.ndim != 2 or tokens.shape[1] != self.config.num_tokens:
            raise ValueError(
                f"VQModel: tokens must be int[B, {self.config.num_tokens}], got {tokens.shape}"
            )

    def _check_pixels(self, pixels: jax.Array) -> None:
        s, c = self.config.image_size, self.config.in_channels
        if pixels.ndim != 4 or pixels.shape[1:] != (s, s, c):
            raise ValueError(f"VQModel: pixels must be float[B, {s}, {s}, {c}], got {pixels.shape}")

    def codebook_lookup(self, tokens: jax.Array) -> jax.Array:
        """tokens: int32[B, N] -> float32[B, g, g, D] L2-normalised codebook rows.

        Raster order: token t sits at row ``t // g``, column ``t % g``.
        """
        self._check_tokens(tokens)
        g = self.config.grid_size
        return self.quantize.lookup(tokens).reshape(tokens.shape[0], g, g, -1)

    def decode_tokens(self, tokens: jax.Array) -> jax.Array:
        """tokens: int32[B, N] -> pixels: dtype[B, S, S, out_channels], nominally in [-1, 1].

        ``post_quant_conv`` + decoder on the normalised codebook rows. Not clipped: use
        ``to_uint8`` for the reference post-processing.
        """
        z = sharding.constrain(self.codebook_lookup(tokens), "batch", None, None, None)
        return self.decoder(self.post_quant_conv(z))

    def encode_latents(self, pixels: jax.Array) -> jax.Array:
        """pixels: float[B, S, S, in_channels] in [-1, 1] -> latents: dtype[B, g, g, D].

        ``quant_conv(encoder(pixels))``, before quantisation.
        """
        self._check_pixels(pixels)
        pixels = sharding.constrain(pixels, "batch", None, None, None)
        return self.quant_conv(self.encoder(pixels))

    def encode(self, pixels: jax.Array) -> jax.Array:
        """pixels: float[B, S, S, in_channels] in [-1, 1] -> tokens: int32[B, N] (raster order).

        Each latent vector is assigned the codebook row nearest to it after L2-normalising both,
        as the original LlamaGen/Janus ``VectorQuantizer(l2_norm=True)`` does. transformers'
        ``JanusVQVAEVectorQuantizer`` does NOT normalise, so its ``encode`` tokens can differ from
        these; the latents (``encode_latents``) are the same.
        """
        latents = self.encode_latents(pixels)
        return self.quantize.nearest(latents).reshape(pixels.shape[0], -1)


def to_uint8(pixels: jax.Array) -> jax.Array:
    """pixels: float[..., 3] nominally in [-1, 1] -> uint8[..., 3].

    ``uint8(clip((x + 1) / 2 * 255, 0, 255))`` in fp32, truncating toward zero as the original
    numpy assignment does (spec/janus.md §5.3 step 5).
    """
    x = jnp.asarray(pixels, jnp.float32)
    return jnp.clip((x + 1) / 2 * 255, 0, 255).astype(jnp.uint8)
