"""Train checkpoints: what they hold, saving, restoring, and falling back past a corrupt one.

A train checkpoint (``RUN_DIR/checkpoints/STEP``) holds the trainable params, the optimizer state
and the step (item ``state``), and the data iterator's state (item ``data``, JSON). Frozen
params come back from the model source, the KL reference copy from the params.

A checkpoint that Orbax lists as finished can still be unreadable: a truncated array file, an
empty ``_METADATA``, a damaged JSON item (a disk that filled up, a copy cut short). Restoring it
raises from deep inside TensorStore or ``json``; ``restore_newest_intact`` names the step, its
path and the cause instead, and with ``OnCorrupt.PREVIOUS`` moves the bad step out of the
checkpoint directory (to ``RUN_DIR/corrupt_checkpoints/``, never deleted) and tries the next
older one. It never silently starts over: when no step can be read it raises.
"""

from __future__ import annotations

import datetime
import enum
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from pairuni_jax.errors import UserError, one_line
from pairuni_jax.rl.train_step import TrainState

CORRUPT_DIR = "corrupt_checkpoints"
T = TypeVar("T")


class OnCorrupt(enum.Enum):
    """What the trainer does when the latest checkpoint cannot be read."""

    PREVIOUS = "previous"  # set it aside and resume from the newest intact one (with a message)
    STOP = "stop"  # stop with the step, path and cause


class CorruptCheckpointError(UserError):
    """A train checkpoint that cannot be restored; the message names its step and path."""


def _saved_state(state: TrainState) -> dict[str, Any]:
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


def save_checkpoint(
    manager: ocp.CheckpointManager, step: int, state: TrainState, data_state: Any
) -> None:
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(_saved_state(state)),
            data=ocp.args.JsonSave(data_state),
        ),
    )


def restore_checkpoint(
    manager: ocp.CheckpointManager, step: int, state: TrainState
) -> tuple[TrainState, Any]:
    """``state`` with the checkpoint's params, optimizer state and step (each array restored
    onto the sharding it has in ``state``), and the saved data iterator state."""
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), _saved_state(state)
    )
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()
        ),
    )
    saved = restored["state"]
    ref = state.ref_params
    if ref is not None:  # the KL reference is the initial policy, not the resumed one
        ref = jax.tree.map(jnp.copy, state.ref_params)
    return (
        state.replace(
            step=saved["step"], params=saved["params"], opt_state=saved["opt_state"], ref_params=ref
        ),
        restored["data"],
    )


def _is_resource_error(error: Exception) -> bool:
    """Out of memory is not corruption: the same checkpoint may restore with more memory."""
    return isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in str(error)


def restore_newest_intact(
    make_manager: Callable[[], ocp.CheckpointManager],
    restore: Callable[[ocp.CheckpointManager, int], T],
    on_corrupt: OnCorrupt,
    set_aside_to: Path,
) -> tuple[ocp.CheckpointManager, int | None, T | None]:
    """Restores the newest readable step; returns (manager, step, restored), or (manager,
    None, None) when there is no checkpoint at all.

    make_manager: a fresh ``CheckpointManager`` of the run (rebuilt after a step is set aside,
      so it neither lists it nor refuses to save at its step).
    restore: ``(manager, step) -> restored``; any exception it raises (except running out of
      memory) marks the step corrupt.
    set_aside_to: where corrupt steps go (``RUN_DIR/corrupt_checkpoints``).
    """
    manager = make_manager()
    while (step := manager.latest_step()) is not None:
        path = Path(manager.directory) / str(step)
        try:
            return manager, step, restore(manager, step)
        except Exception as e:
            if _is_resource_error(e):
                raise
            problem = f"checkpoint step {step} at {path} cannot be read: {one_line(e)[:300]}"
            older = [s for s in manager.all_steps() if s < step]
            if on_corrupt is OnCorrupt.STOP:
                hint = (
                    f"; checkpoint.on_corrupt=previous resumes from step {max(older)}"
                    if older
                    else ""
                )
                raise CorruptCheckpointError(problem + hint) from e
            if not older:
                raise CorruptCheckpointError(
                    f"{problem}; no older checkpoint is left to resume from (move the "
                    f"directory away to start over)"
                ) from e
            manager.close()
            target = set_aside_to / f"{step}-{_now()}"
            if jax.process_index() == 0:  # the lead host moves it; every host then re-lists
                set_aside_to.mkdir(parents=True, exist_ok=True)
                path.rename(target)
                print(f"{problem}; moved it to {target}", file=sys.stderr)
            if jax.process_count() > 1:
                multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
            manager = make_manager()
    return manager, None, None


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
