"""Stacked layers: one scan over them, and the rematerialisation policy every model takes.

Layer parameters are stacked on a leading ``layers`` axis (built with ``nnx.vmap``), so a model of
any depth compiles one layer body. ``scan`` runs that body over the stack with ``lax.scan``;
``rematerialised`` wraps any module call in ``jax.checkpoint`` for the chosen ``RematPolicy``
(the VQ's resolution levels, which have different shapes and are not scanned, use it directly).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TypeVar

import jax
from flax import nnx

M = TypeVar("M", bound=nnx.Module)
Array = jax.Array


class RematPolicy(enum.StrEnum):
    """What the backward pass keeps of a layer's forward.

    ``none``: every activation; ``full``: only the layer's input (recompute the rest);
    ``dots``: matmul outputs without a batch dimension (recompute the cheap elementwise work).
    """

    NONE = "none"
    FULL = "full"
    DOTS = "dots"


def checkpoint(fn: Callable, policy: RematPolicy, *, prevent_cse: bool = True) -> Callable:
    """``fn`` (pure) under ``jax.checkpoint`` with ``policy``; ``fn`` itself for ``none``.

    ``prevent_cse=False`` is right inside a scan (see ``jax.checkpoint``).
    """
    policy = RematPolicy(policy)
    if policy is RematPolicy.NONE:
        return fn
    saveable = {
        RematPolicy.FULL: jax.checkpoint_policies.nothing_saveable,
        RematPolicy.DOTS: jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    }[policy]
    return jax.checkpoint(fn, policy=saveable, prevent_cse=prevent_cse)


def rematerialised(
    fn: Callable[[M, Array], Array], policy: RematPolicy
) -> Callable[[M, Array], Array]:
    """``fn(module, x)`` under ``checkpoint``: the module is split into its graph and state, so
    the checkpointed function is pure in the parameters."""
    if RematPolicy(policy) is RematPolicy.NONE:
        return fn

    def call(module: M, x: Array) -> Array:
        graphdef, state = nnx.split(module)
        return checkpoint(lambda s, x: fn(nnx.merge(graphdef, s), x), policy)(state, x)

    return call


def scan(
    layers: M,
    x: Array,
    body: Callable[[M, Array], Array],
    remat: RematPolicy = RematPolicy.NONE,
    *,
    unroll: bool = False,
) -> Array:
    """``x`` through every layer of the stacked ``layers``: ``x = body(layer_i, x)`` for each i.

    layers: a module whose parameters have a leading ``layers`` axis; body: one layer's forward
    (its output has ``x``'s shape and dtype); remat: the policy for each layer's body;
    unroll: unroll the loop completely instead of scanning (same parameters, same result; the
    compiled program grows with depth).
    """
    graphdef, state = nnx.split(layers)

    def scan_body(x: Array, layer_state: nnx.State) -> tuple[Array, None]:
        return body(nnx.merge(graphdef, layer_state), x), None

    length = jax.tree.leaves(state)[0].shape[0]
    scan_body = checkpoint(scan_body, remat, prevent_cse=False)
    x, _ = jax.lax.scan(scan_body, x, state, unroll=length if unroll else 1)
    return x
