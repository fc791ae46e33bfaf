"""Rematerialisation policies for scanned layers: trade recomputation for activation memory."""

from __future__ import annotations

import enum
from collections.abc import Callable

import jax


class RematPolicy(enum.Enum):
    """``none``: keep all activations; ``full``: keep only each layer's input;
    ``dots``: keep matmul outputs without a batch dimension (recompute the cheap elementwise work)."""

    NONE = "none"
    FULL = "full"
    DOTS = "dots"


def apply(fn: Callable, policy: RematPolicy) -> Callable:
    """Wraps a scan body in ``jax.checkpoint`` according to ``policy``."""
    if policy is RematPolicy.NONE:
        return fn
    saveable = {
        RematPolicy.FULL: jax.checkpoint_policies.nothing_saveable,
        RematPolicy.DOTS: jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    }[policy]
    return jax.checkpoint(fn, policy=saveable, prevent_cse=False)
