"""Random models without compiling their initialisers: for demos, tests and benchmarks.

Building a module eagerly runs (and compiles) one small program per parameter shape, and jitting
the whole initialiser compiles one very large program; on CPU either takes tens of seconds for the
tiny models. Real runs start from converted checkpoints, so random weights only need to be
well-scaled, not to follow each layer's initialiser: norm scales are 1, biases 0, and every other
parameter is N(0, stddev²), drawn on the host with NumPy from ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from pairuni_jax import sharding


def random_module(
    factory: Callable[[], nnx.Module], seed: int, mesh: Mesh | None = None, stddev: float = 0.02
) -> nnx.Module:
    """``factory()``'s module with host-drawn random parameters, sharded on ``mesh`` if given."""
    abstract = nnx.eval_shape(factory)
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key if hasattr(path[-1], "key") else path[-1]
        if name == "scale":
            value = np.ones(leaf.shape)
        elif name == "bias":
            value = np.zeros(leaf.shape)
        else:
            value = rng.normal(0.0, stddev, leaf.shape)
        return value.astype(leaf.dtype)

    values = jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(state))
    if mesh is None:
        values = jax.tree.map(jax.numpy.asarray, values)
    else:
        values = jax.device_put(values, nnx.to_pure_dict(sharding.state_shardings(state, mesh)))
    nnx.replace_by_pure_dict(state, values)
    return nnx.merge(graphdef, state)


def compiled_init(factory: Callable[[], nnx.Module]) -> nnx.Module:
    """``factory()``'s module with its own initialisers, run as one compiled program (for
    training from scratch, where the initialisers matter; faster than eager init on CPU)."""
    graphdef, _ = nnx.split(nnx.eval_shape(factory))
    return nnx.merge(graphdef, jax.jit(lambda: nnx.state(factory()))())
