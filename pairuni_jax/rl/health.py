"""Non-finite checks of a train step: the losses, the gradient norm and the updated params.

Computed inside the jitted step (one reduction over the params, no extra transfer) and returned
as metrics ``nonfinite/loss``, ``nonfinite/grad_norm``, ``nonfinite/params`` (1.0 when that
value is NaN or infinite, else 0.0). With ``NanPolicy.SKIP_STEP`` the step keeps the previous
params and optimizer state when any of them is set; with ``NanPolicy.STOP`` the trainer stops
before anything of that step is saved.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
KEYS = ("nonfinite/loss", "nonfinite/grad_norm", "nonfinite/params")


class NanPolicy(enum.Enum):
    """What a run does when a step's loss, gradient norm or updated params are not finite."""

    STOP = "stop"  # stop the run at that step, before a checkpoint is written
    SKIP_STEP = "skip_step"  # discard that step's update and go on (counted and reported)


class NonFiniteError(RuntimeError):
    """A step with a non-finite loss, gradient norm or param under ``NanPolicy.STOP``."""


def flagged(flags: dict[str, Any]) -> list[str]:
    """The ``KEYS`` set in host values of the flags."""
    return [k for k in KEYS if flags[k]]


def describe(flagged_keys: list[str], values: dict[str, float]) -> str:
    """A message naming what was not finite, with the values (``values``: the step's metrics)."""
    parts = []
    if "nonfinite/loss" in flagged_keys:
        losses = ", ".join(f"{k} = {values[k]}" for k in ("und/policy_loss", "gen/policy_loss"))
        parts.append(f"non-finite loss ({losses})")
    if "nonfinite/grad_norm" in flagged_keys:
        parts.append(f"non-finite gradient norm (grad_norm = {values['grad_norm']})")
    if "nonfinite/params" in flagged_keys:
        parts.append("non-finite params after the update")
    return "; ".join(parts)


def _all_finite(tree: Any) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def nonfinite_flags(losses: Sequence[Array], grad_norms: Array, params: Any) -> dict[str, Array]:
    """``KEYS`` -> float32 0/1 scalars. grad_norms: float32[μ], one per inner iteration."""
    flags = (_all_finite(list(losses)), _all_finite(grad_norms), _all_finite(params))
    return {k: 1.0 - ok.astype(jnp.float32) for k, ok in zip(KEYS, flags, strict=True)}


def keep_previous_if_nonfinite(
    flags: dict[str, Array], skip: Array, new: Any, previous: Any
) -> Any:
    """``previous`` when ``skip`` (bool scalar) and any flag is set, else ``new`` (pytrees of
    one structure)."""
    keep_new = jnp.logical_or(jnp.logical_not(skip), sum(flags.values()) == 0)
    return jax.tree.map(lambda n, p: jnp.where(keep_new, n, p), new, previous)
