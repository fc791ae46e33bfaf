"""The decode layout: what the sampling loops read, cast and resharded once before the loops.

A decode loop reads every weight of the decoder (and a head) at every token. Left in the
training layout (FSDP: each device holds a slice of every weight), each token re-gathers the
weights or all-reduces partial matmul outputs across devices, in every layer. A
``Decoder`` is built once per step, inside the jitted program: the layers (``split_layers``), the
token embedding, the final norm, the text head and the generation path (code embedding, aligner,
head) are cast to the compute dtype and laid out for decoding; the activations and the KV cache
follow (``sharding.activation_rules``). Three layouts (``DecodeLayout``):

- ``train``: the weights stay as trained (cast only); per-token traffic is the compiler's choice.
- ``replicated``: every device holds the whole (compute-dtype) copy; rows split over every mesh
  axis; no collective in the decode loops. Costs the whole copy in HBM on every device.
- ``tensor``: the big matrices (decoder layers, text and generation heads) split their *output*
  features over the ``tensor`` mesh axis, the rest is replicated (the token embedding too: a
  lookup in a split table makes the partitioner gather the whole table); rows split over
  ``data`` × ``fsdp`` as in training. Each matmul then computes whole dot products (its input
  is all-gathered, never summed from partial products), so tokens and log-probs are bit-identical
  to the other layouts; per token and layer the loops all-gather a few activation rows.

``auto`` (the default) picks ``replicated`` when its copy takes at most ``AUTO_HBM_FRACTION`` of
a device's HBM (or the HBM is unknown), else ``tensor`` when the mesh has a tensor axis and its
copy fits that share, else ``train``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec

from pairuni_jax import sharding
from pairuni_jax.models import cost
from pairuni_jax.models.janus import Janus, JanusConfig
from pairuni_jax.models.llama import DecoderLayer

# The share of a device's HBM the decode copy may take under ``auto``. From the TPU plans of the
# paper's settings: the training step itself leaves 20-75% of HBM free, so a quarter is safe.
AUTO_HBM_FRACTION = 0.25


class DecodeLayout(enum.Enum):
    AUTO = "auto"
    TRAIN = "train"
    REPLICATED = "replicated"
    TENSOR = "tensor"


_NO_MODEL_AXES = tuple(
    (name, None) for name in ("embed", "mlp", "heads", "kv_heads", "vocab", "layers", "norm")
) + (("length", None), ("head_dim", None), ("cache_length", None))
RULES = {
    DecodeLayout.TRAIN: sharding.LOGICAL_AXIS_RULES,
    DecodeLayout.REPLICATED: (("batch", sharding.MESH_AXES),) + _NO_MODEL_AXES,
    DecodeLayout.TENSOR: (
        ("batch", ("data", "fsdp")),
        ("embed", None),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("vocab", "tensor"),
        ("length", None),
        ("head_dim", None),
        ("cache_length", None),
    ),
}
# Modules the decode loops read besides the layers; of those, the big matrices ``tensor`` splits.
LOOP_MODULES = (
    ("language_model", "embed_tokens"),
    ("language_model", "norm"),
    ("lm_head",),
    ("generation_embeddings",),
    ("generation_aligner",),
    ("generation_head",),
)
_SPLIT_BY_TENSOR = (
    ("lm_head",),
    ("generation_head", "vision_head"),
)


def batch_axes(layout: DecodeLayout) -> tuple[str, ...]:
    """The mesh axes the rollout rows split over."""
    return ("data", "fsdp", "tensor") if layout is DecodeLayout.REPLICATED else ("data", "fsdp")


def resolve(
    layout: DecodeLayout,
    model: JanusConfig,
    mesh_shape: dict[str, int],
    dtype: Any,
    hbm_bytes: int | None,
    rows: dict[str, int],
) -> DecodeLayout:
    """``layout`` checked (``check``), with ``auto`` replaced by the layout it picks (see the
    module docstring; a layout whose rows do not split is skipped)."""
    if layout is not DecodeLayout.AUTO:
        check(layout, model, mesh_shape, rows)
        return layout
    budget = None if hbm_bytes is None else AUTO_HBM_FRACTION * hbm_bytes
    for candidate in (DecodeLayout.REPLICATED, DecodeLayout.TENSOR):
        if candidate is DecodeLayout.TENSOR and mesh_shape.get("tensor", 1) == 1:
            continue
        copy = possible_copy_bytes(candidate, model, mesh_shape, dtype, rows)
        if copy is not None and (budget is None or copy <= budget):
            return candidate
    return DecodeLayout.TRAIN


def possible_copy_bytes(
    layout: DecodeLayout,
    model: JanusConfig,
    mesh_shape: dict[str, int],
    dtype: Any,
    rows: dict[str, int],
) -> int | None:
    """``copy_bytes`` of ``layout``, or None when it cannot lay out these rollouts (``check``)."""
    try:
        check(layout, model, mesh_shape, rows)
    except ValueError:
        return None
    return copy_bytes(model, layout, mesh_shape, dtype)


def check(layout: DecodeLayout, model: JanusConfig, mesh_shape: dict[str, int], rows: dict) -> None:
    """Raises ValueError naming the field when ``layout`` cannot lay out these rollouts.

    rows: {what: count} of the rollout rows (answers, CFG image rows) the loops decode."""
    ways = math.prod(mesh_shape.get(a, 1) for a in batch_axes(layout))
    for what, count in rows.items():
        if count % ways:
            raise ValueError(
                f"grpo.rollout.layout={layout.value} splits rollout rows over "
                f"{' x '.join(batch_axes(layout))} = {ways} devices, but the {count} {what} "
                f"do not divide by {ways}"
            )
    tensor = mesh_shape.get("tensor", 1)
    text = model.text
    if layout is DecodeLayout.TENSOR and (text.num_heads % tensor or text.num_kv_heads % tensor):
        raise ValueError(
            f"grpo.rollout.layout=tensor splits attention heads over mesh.tensor={tensor}, "
            f"which does not divide num_heads={text.num_heads} / "
            f"num_kv_heads={text.num_kv_heads}"
        )


def copy_bytes(
    model: JanusConfig, layout: DecodeLayout, mesh_shape: dict[str, int], dtype: Any
) -> int:
    """Analytic bytes per device of the decode copy (the weights the loops read, cast to
    ``dtype``): whole with ``replicated``, the big matrices over ``tensor`` with ``tensor``, as
    sharded in training with ``train``."""
    itemsize = jnp.dtype(dtype).itemsize
    t = model.text
    h, c = t.hidden_size, model.vq.num_embeddings
    split = t.vocab_size * h + h * c + t.num_layers * cost.llm_layer_params(t)
    rest = (
        t.vocab_size * h
        + model.vq.num_embeddings * model.vq.embed_dim
        + model.vq.embed_dim * h
        + (model.aligner_depth - 1) * h * h
        + h * h
    )
    if layout is DecodeLayout.REPLICATED:
        return (split + rest) * itemsize
    if layout is DecodeLayout.TENSOR:
        return (split // mesh_shape.get("tensor", 1) + rest) * itemsize
    shards = mesh_shape.get("fsdp", 1) * mesh_shape.get("tensor", 1)
    return (split + rest) * itemsize // shards


def _mesh_size(axis: str) -> int:
    mesh = jax.sharding.get_abstract_mesh()
    return 1 if mesh.empty else mesh.shape[axis]


def _place(path: tuple[str, ...], x: jax.Array, layout: DecodeLayout, split: bool) -> jax.Array:
    """One weight in the decode layout (unchanged outside a mesh and for ``train``)."""
    if layout is DecodeLayout.TRAIN or jax.sharding.get_abstract_mesh().empty:
        return x
    spec = [None] * x.ndim
    tensor = _mesh_size("tensor")
    kind = path[-1]
    if layout is DecodeLayout.TENSOR and split and kind in ("kernel", "embedding", "bias"):
        if x.shape[-1] % tensor == 0:
            spec[-1] = "tensor"
    return jax.lax.with_sharding_constraint(x, PartitionSpec(*spec))


def _names(path: tuple) -> tuple[str, ...]:
    keys = (getattr(k, "key", getattr(k, "name", None)) for k in path)
    return tuple(str(k) for k in keys if k not in (None, "value"))


def _laid_out(state: nnx.State, layout: DecodeLayout, dtype: Any, prefix=()) -> nnx.State:
    """``state`` with every weight under ``LOOP_MODULES`` (or all of it, with a ``prefix``) cast
    to ``dtype`` and placed in ``layout``; other weights untouched."""

    def one(path, x):
        names = prefix + _names(path)
        if not prefix and not any(names[: len(m)] == m for m in LOOP_MODULES):
            return x
        split = names[0] == "layers" or any(names[: len(m)] == m for m in _SPLIT_BY_TENSOR)
        return _place(names, x.astype(dtype), layout, split)

    return jax.tree_util.tree_map_with_path(one, state)


class Decoder:
    """What a rollout's prefill and decode loops read, in one decode layout.

    Build it inside the jitted program (once per step) and pass it to ``sample_text`` /
    ``sample_images`` in place of the model; the vision tower (run once, in the prefill) stays
    in the training layout. model: the policy with the loop-read weights replaced by their
    decode copies; layers: the L decoder layers, each sliced out of the stack and laid out.
    """

    def __init__(self, model: Janus, layout: DecodeLayout = DecodeLayout.TRAIN):
        if layout is DecodeLayout.AUTO:
            raise ValueError("resolve the decode layout (rollout.layout.resolve) first")
        self.layout = layout
        self.source = model
        graphdef, state = nnx.split(model)
        self.model: Janus = nnx.merge(graphdef, _laid_out(state, layout, model.dtype))
        self.layers: tuple[DecoderLayer, ...] = tuple(
            nnx.merge(g, _laid_out(s, layout, model.dtype, prefix=("layers",)))
            for g, s in map(nnx.split, model.language_model.split_layers())
        )

    @contextmanager
    def activations(self) -> Iterator[None]:
        """Constraints traced inside this block lay activations and KV caches out to match."""
        with sharding.activation_rules(RULES[self.layout]):
            yield
