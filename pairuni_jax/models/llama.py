"""The LLaMA decoder of Janus-Pro (DeepSeek-LLM), with a KV cache for the rollout engine.

Shape letters: B batch, S query positions, T key positions (cache slots), H model width,
N query heads, K key/value heads, D head width, V vocabulary, L layers.

Numerics follow spec/janus.md §8: RMSNorm normalises in fp32 and casts back before the weight,
rotate-half RoPE with cos/sin computed in fp32, softmax in fp32, SwiGLU MLP without biases.
Layer parameters are stacked on a leading ``layers`` axis and run with ``lax.scan`` (or unrolled
with ``scan_layers=False``); the checkpoint layout is the same either way.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from pairuni_jax.models import stack
from pairuni_jax.sharding import axes, constrain

Array = jax.Array
# Query block of ``causal_attention``: each block attends to the keys up to its own last position.
CAUSAL_BLOCK = 256


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Architecture of the language model (HF ``LlamaConfig`` names in brackets)."""

    vocab_size: int = 102400
    hidden_size: int = 2048
    intermediate_size: int = 5632
    num_layers: int = 24  # [num_hidden_layers]
    num_heads: int = 16  # [num_attention_heads]
    num_kv_heads: int = 16  # [num_key_value_heads]
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 16384

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotate-half RoPE, got {self.head_dim}")

    @classmethod
    def janus_pro_1b(cls) -> LlamaConfig:
        return cls()

    @classmethod
    def janus_pro_7b(cls) -> LlamaConfig:
        return cls(
            hidden_size=4096, intermediate_size=11008, num_layers=30, num_heads=32, num_kv_heads=32
        )

    @classmethod
    def small(cls) -> LlamaConfig:
        """Benchmark size (``scripts/bench_*.py``): the real vocabulary, width 512, 8 layers."""
        return cls(
            hidden_size=512,
            intermediate_size=1408,
            num_layers=8,
            num_heads=8,
            num_kv_heads=8,
            head_dim=64,
            max_position_embeddings=4096,
        )

    @classmethod
    def tiny(cls) -> LlamaConfig:
        return cls(
            vocab_size=1024,
            hidden_size=64,
            intermediate_size=128,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            head_dim=16,
            max_position_embeddings=512,
        )


@flax.struct.dataclass
class KVCache:
    """Preallocated keys and values of every layer.

    k, v: one array per layer (a tuple of L), each [B, K, T, D] in the cache dtype (bf16 on
      accelerators). Separate per-layer buffers let each decode step update and read a layer's
      cache in place; slicing one layer out of a stacked [L, ...] array inside the layer loop
      copies it (on CPU the copies cost more than the attention itself).
    valid: bool[B, T], True where a slot holds a real (non-padding) token.
    index: int32 scalar, the next slot to write; all rows share it (prompts are left-padded).
    """

    k: tuple[Array, ...]
    v: tuple[Array, ...]
    valid: Array
    index: Array

    @classmethod
    def create(cls, config: LlamaConfig, batch: int, length: int, dtype: Any) -> KVCache:
        shape = (batch, config.num_kv_heads, length, config.head_dim)
        return cls(
            k=tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)),
            v=tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)),
            valid=jnp.zeros((batch, length), bool),
            index=jnp.zeros((), jnp.int32),
        )

    @property
    def length(self) -> int:
        return self.k[0].shape[2]


class RMSNorm(nnx.Module):
    """``weight * (x / rms(x))`` with the normalisation in fp32, cast back before the weight."""

    def __init__(self, dim: int, eps: float, *, dtype: Any, param_dtype: Any):
        self.eps = eps
        self.dtype = dtype
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), **axes("norm"))

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(self.dtype) * y.astype(self.dtype)


def rope_tables(positions: Array, head_dim: int, theta: float, dtype: Any) -> tuple[Array, Array]:
    """cos, sin: [B, S, D] for integer ``positions`` [B, S] (HF rotate-half layout)."""
    inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """x: [B, S, heads, D]; cos, sin: [B, S, D]."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


def dot_product_attention(q: Array, k: Array, v: Array, mask: Array) -> Array:
    """Masked softmax attention with grouped key/value heads.

    q: [B, S, N, D]; k, v: [B, K, T, D]; mask: bool[B, S, T]. Returns [B, S, N, D].
    Logits and softmax in fp32; fully masked rows (padding queries) give a uniform average.
    """
    b, s, n, d = q.shape
    kv_heads = k.shape[1]
    q = q.reshape(b, s, kv_heads, n // kv_heads, d)
    logits = jnp.einsum("bskgd,bktd->bkgst", q, k, preferred_element_type=jnp.float32)
    logits = logits * (d**-0.5)
    logits = jnp.where(mask[:, None, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgst,bktd->bskgd", probs, v)
    return out.reshape(b, s, n, d)


def causal_attention(q: Array, k: Array, v: Array, mask: Array, block: int = CAUSAL_BLOCK) -> Array:
    """``dot_product_attention`` of S positions over their own keys under a causal ``mask``.

    q: [B, S, N, D]; k, v: [B, K, S, D]; mask: bool[B, S, S], False wherever the key comes after
    the query. Queries go in blocks of ``block``, each over the keys up to its last position:
    the masked upper triangle is never computed (about a third less work for a 640-token prompt).
    """
    s = q.shape[1]
    outs = [
        dot_product_attention(q[:, a:b], k[:, :, :b], v[:, :, :b], mask[:, a:b, :b])
        for a, b in ((a, min(a + block, s)) for a in range(0, s, block))
    ]
    return jnp.concatenate(outs, axis=1)


def _linear(din: int, dout: int, names: tuple[str, str], rngs: nnx.Rngs, **kw) -> nnx.Linear:
    return nnx.Linear(
        din,
        dout,
        use_bias=False,
        kernel_metadata=axes(*names),
        kernel_init=nnx.initializers.normal(0.02),
        rngs=rngs,
        **kw,
    )


class Attention(nnx.Module):
    """Causal self-attention with RoPE; reads and writes a per-layer slice of the KV cache."""

    def __init__(self, config: LlamaConfig, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        self.config = config
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        h, d = config.hidden_size, config.head_dim
        self.q_proj = _linear(h, config.num_heads * d, ("embed", "heads"), **kw)
        self.k_proj = _linear(h, config.num_kv_heads * d, ("embed", "kv_heads"), **kw)
        self.v_proj = _linear(h, config.num_kv_heads * d, ("embed", "kv_heads"), **kw)
        self.o_proj = _linear(config.num_heads * d, h, ("heads", "embed"), **kw)

    def __call__(
        self,
        x: Array,
        cos: Array,
        sin: Array,
        mask: Array,
        past: tuple[Array, Array] | None,
        index: Array | None,
    ) -> tuple[Array, tuple[Array, Array] | None]:
        """x: [B, S, H]; mask: bool[B, S, T].

        Without a cache (``past=None``) the keys are this call's S positions (T = S). With this
        layer's cache ``past = (k, v)`` of [B, K, T, D], the new keys and values are written at
        slot ``index`` and attention runs over all T slots. Returns the output [B, S, H] and the
        updated layer cache (None without one).
        """
        c = self.config
        b, s, _ = x.shape
        q = self.q_proj(x).reshape(b, s, c.num_heads, c.head_dim)
        k = self.k_proj(x).reshape(b, s, c.num_kv_heads, c.head_dim)
        v = self.v_proj(x).reshape(b, s, c.num_kv_heads, c.head_dim)
        q = constrain(apply_rope(q, cos, sin), "batch", "length", "heads", "head_dim")
        k = constrain(apply_rope(k, cos, sin), "batch", "length", "kv_heads", "head_dim")
        k, v = k.swapaxes(1, 2), v.swapaxes(1, 2)  # [B, K, S, D]
        if past is not None:  # write first, then read the updated buffer: no copy of the cache
            start = (0, 0, index, 0)
            k = jax.lax.dynamic_update_slice(past[0], k.astype(past[0].dtype), start)
            v = jax.lax.dynamic_update_slice(past[1], v.astype(past[1].dtype), start)
        # S keys for S queries: no cache, or a prefill filling a cache of exactly S slots (which
        # must start at slot 0). Either way the mask is causal.
        attend = causal_attention if k.shape[2] == s else dot_product_attention
        out = attend(q, k.astype(q.dtype), v.astype(q.dtype), mask)
        out = self.o_proj(out.reshape(b, s, c.num_heads * c.head_dim))
        return out, (None if past is None else (k, v))


class MLP(nnx.Module):
    """``down(silu(gate(x)) * up(x))``."""

    def __init__(self, config: LlamaConfig, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        h, i = config.hidden_size, config.intermediate_size
        self.gate_proj = _linear(h, i, ("embed", "mlp"), **kw)
        self.up_proj = _linear(h, i, ("embed", "mlp"), **kw)
        self.down_proj = _linear(i, h, ("mlp", "embed"), **kw)

    def __call__(self, x: Array) -> Array:
        hidden = jax.nn.silu(self.gate_proj(x)) * self.up_proj(x)
        return self.down_proj(constrain(hidden, "batch", "length", "mlp"))


class DecoderLayer(nnx.Module):
    """Pre-norm residual block: attention, then the MLP."""

    def __init__(self, config: LlamaConfig, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)
        self.self_attn = Attention(config, rngs=rngs, **kw)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)
        self.mlp = MLP(config, rngs=rngs, **kw)

    def __call__(self, x, cos, sin, mask, past, index):
        attn_out, new_kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, past, index)
        # Whole rows before the norm: a norm over a split width would sum partial squares.
        x = constrain(x + attn_out, "batch", "length", "embed")
        x = x + self.mlp(self.post_attention_layernorm(x))
        return constrain(x, "batch", "length", "embed"), new_kv


class LlamaModel(nnx.Module):
    """Token embedding, stacked decoder layers and the final norm (HF ``LlamaModel``)."""

    def __init__(
        self,
        config: LlamaConfig,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        scan_layers: bool = True,
        remat: stack.RematPolicy = stack.RematPolicy.NONE,
        rngs: nnx.Rngs,
    ):
        self.config = config
        self.dtype = dtype
        self.scan_layers = scan_layers
        self.remat = stack.RematPolicy(remat)
        self.embed_tokens = nnx.Embed(
            config.vocab_size,
            config.hidden_size,
            dtype=dtype,
            param_dtype=param_dtype,
            embedding_init=nnx.initializers.normal(0.02),
            embedding_metadata=axes("vocab", "embed"),
            rngs=rngs,
        )

        @nnx.split_rngs(splits=config.num_layers)
        @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_layers(rngs: nnx.Rngs) -> DecoderLayer:
            return DecoderLayer(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

        self.layers = make_layers(rngs)
        self.norm = RMSNorm(
            config.hidden_size, config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype
        )

    def split_layers(self) -> tuple[DecoderLayer, ...]:
        """The stacked layers as L separate modules, each with its parameters sliced out of the
        stack and cast to the compute dtype.

        Sampling loops call this once, before the loop, and pass the result to every cached
        forward: slicing (and casting) inside the loop would copy every weight at every token.
        """
        graphdef, state = nnx.split(self.layers)

        def layer(w: Array, i: int) -> Array:  # quantised kernels (QLoRA) keep their storage
            return w[i].astype(self.dtype) if jnp.issubdtype(w.dtype, jnp.floating) else w[i]

        return tuple(
            nnx.merge(graphdef, jax.tree.map(lambda w, i=i: layer(w, i), state))
            for i in range(self.config.num_layers)
        )

    def __call__(
        self,
        embeds: Array,
        positions: Array,
        attention_mask: Array,
        cache: KVCache | None = None,
        layers: tuple[DecoderLayer, ...] | None = None,
    ) -> tuple[Array, KVCache | None]:
        """Runs the decoder over ``embeds`` [B, S, H] and returns the final-norm hidden states.

        positions: int32[B, S] RoPE positions (for left padding, the count of real tokens before).
        attention_mask: bool[B, S], False on padding.
        cache: if given, the S new keys/values go to slots ``cache.index .. + S`` and queries
        attend over every valid slot up to their own; the updated cache is returned. The layers
        then run as a Python loop over ``layers`` (``split_layers()``, computed here when None);
        sampling needs no gradients, so ``remat`` does not apply.
        """
        c = self.config
        s = embeds.shape[1]
        cos, sin = rope_tables(positions, c.head_dim, c.rope_theta, self.dtype)
        x = constrain(embeds.astype(self.dtype), "batch", "length", "embed")
        if cache is None:
            mask = jnp.tril(jnp.ones((s, s), bool))[None] & attention_mask[:, None, :]
            x = stack.scan(
                self.layers,
                x,
                lambda layer, x: layer(x, cos, sin, mask, None, None)[0],
                self.remat,
                unroll=not self.scan_layers,
            )
            return self.norm(x), None

        # With a cache (sampling), the layers run as a Python loop over the per-layer buffers.
        layers = self.split_layers() if layers is None else layers
        index = cache.index
        valid = jax.lax.dynamic_update_slice(cache.valid, attention_mask, (0, index))
        slot = jnp.arange(cache.length)
        query_slot = index + jnp.arange(s)
        mask = valid[:, None, :] & (slot[None, None, :] <= query_slot[None, :, None])
        keys, values = [], []
        for i, layer in enumerate(layers):
            x, (k, v) = layer(x, cos, sin, mask, (cache.k[i], cache.v[i]), index)
            keys.append(k)
            values.append(v)
        x = self.norm(x)
        new_cache = KVCache(k=tuple(keys), v=tuple(values), valid=valid, index=index + s)
        return x, new_cache
