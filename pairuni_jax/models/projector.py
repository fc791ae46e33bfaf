"""The small MLPs around the LLM: the understanding aligner, the generation aligner and the generation head.

All use exact-erf GELU (``nn.GELU()`` in the reference), never the tanh approximation.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from pairuni_jax.sharding import axes


def gelu(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)


def _dense(din: int, dout: int, names: tuple[str | None, str], dtype: Any, param_dtype: Any, rngs):
    return nnx.Linear(
        din,
        dout,
        kernel_metadata=axes(*names),
        bias_metadata=axes(names[1]),
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


class AlignerMLP(nnx.Module):
    """``fc1`` then ``depth - 1`` × (GELU → Linear): [..., din] → [..., dout] (HF ``*AlignerMLP``)."""

    def __init__(
        self, din: int, dout: int, depth: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs
    ):
        self.fc1 = _dense(din, dout, (None, "embed"), dtype, param_dtype, rngs)
        self.hidden_layers = nnx.List(
            [
                _dense(dout, dout, ("mlp", "embed"), dtype, param_dtype, rngs)
                for _ in range(depth - 1)
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.fc1(x)
        for layer in self.hidden_layers:
            x = layer(gelu(x))
        return x


class GenerationHead(nnx.Module):
    """Image-token logits from LLM hidden states: Linear(H, H) → GELU → Linear(H, codebook)."""

    def __init__(
        self, hidden: int, codebook_size: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs
    ):
        self.proj_out = _dense(hidden, hidden, ("embed", "mlp"), dtype, param_dtype, rngs)
        self.vision_head = _dense(
            hidden, codebook_size, ("embed", "vocab"), dtype, param_dtype, rngs
        )

    def __call__(self, hidden: jax.Array) -> jax.Array:
        return self.vision_head(gelu(self.proj_out(hidden)))
