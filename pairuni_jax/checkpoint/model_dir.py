"""Orbax model directories: ``params/`` (Orbax) + ``config.json`` + side files (tokenizer, ...).

A model directory is what every ``--model`` flag takes. Writes are atomic: everything goes to a
temporary sibling directory that is renamed into place only when complete, so a failed or
interrupted write never leaves a half-written directory under the final name.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh, SingleDeviceSharding

from pairuni_jax import destinations, sharding

PARAMS_SUBDIR = "params"
CONFIG_FILE = "config.json"


class NotAModelDirError(ValueError):
    """Raised when a path is not an Orbax model directory written by this project."""


@contextlib.contextmanager
def atomic_directory(
    destination: str | Path, overwrite: bool = False, command: str = "pairuni"
) -> Iterator[Path]:
    """Yields a temporary directory that becomes ``destination`` when the block succeeds.

    The result carries the ``destinations.MARKER`` of ``command``. An existing ``destination``
    is replaced only with ``overwrite`` and only when it holds nothing but what a pairuni
    command wrote (``destinations.check_replaceable``); it is moved aside before the new one
    is renamed into place and deleted after, so an interruption never leaves neither.
    """
    destination = Path(destination).absolute()
    if destination.exists():
        if not overwrite:
            raise destinations.DestinationError(
                f"{destination} already exists; choose a new path or pass overwrite"
            )
        destinations.check_replaceable(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.parent / f".{destination.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        destinations.write_marker(tmp, command)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if destination.exists():
        destinations.check_replaceable(destination)  # again: it may have changed meanwhile
        old = destination.parent / f".{destination.name}.old-{uuid.uuid4().hex[:8]}"
        destination.rename(old)
    tmp.rename(destination)
    if old is not None:
        shutil.rmtree(old)


def save_params(directory: str | Path, params: Any) -> None:
    """Saves a pytree of arrays (a nested dict) with Orbax under ``directory/params``."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(Path(directory).absolute() / PARAMS_SUBDIR, params)
        checkpointer.wait_until_finished()


def save_model_dir(
    destination: str | Path,
    params: Any,
    config: dict[str, Any],
    files: Iterable[str | Path] = (),
    overwrite: bool = False,
    command: str = "pairuni",
) -> Path:
    """Writes params, ``config.json`` and copies of ``files`` into a new model directory."""
    with atomic_directory(destination, overwrite=overwrite, command=command) as tmp:
        save_params(tmp, params)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for file in files:
            shutil.copy2(file, tmp / Path(file).name)
    return Path(destination)


def read_config(directory: str | Path) -> dict[str, Any]:
    """Reads ``config.json`` of a model directory, with a clear error if it is not one."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise NotAModelDirError(f"{directory} is not a directory")
    if not config_path.is_file() or not (directory / PARAMS_SUBDIR).is_dir():
        raise NotAModelDirError(
            f"{directory} is not an Orbax model directory: expected {CONFIG_FILE} and {PARAMS_SUBDIR}/"
        )
    try:
        return json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise NotAModelDirError(f"{config_path}: invalid JSON ({e})") from e


def restore_params(directory: str | Path, target: Any, *, partial: bool = False) -> Any:
    """Restores params into the structure, dtypes and shardings of ``target``.

    ``target`` is a pytree of ``jax.ShapeDtypeStruct`` with ``sharding`` set (for example from
    ``nnx.eval_shape`` plus ``sharding.state_shardings``): each host reads only the slices its
    devices hold, and nothing is materialised unsharded. ``partial``: ``target`` may name a
    subset of the stored params (one tower of a model); only those are read.
    """
    path = Path(directory).absolute() / PARAMS_SUBDIR
    if not partial:
        with ocp.StandardCheckpointer() as checkpointer:
            return checkpointer.restore(path, target)
    args = ocp.args.PyTreeRestore(
        item=target,
        restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True,
    )
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
        return checkpointer.restore(path, args=args)


def restore_module(directory: str | Path, abstract: nnx.Module, mesh: Mesh | None = None) -> Any:
    """The module ``abstract`` (from ``nnx.eval_shape``) with the params of ``directory``.

    mesh: every parameter is sharded by its logical axes while reading (each host reads only
    the slices its devices hold; nothing is built unsharded); None puts the module on the first
    device. Stored params are cast to the abstract module's param dtypes.
    """
    graphdef, state = nnx.split(abstract)
    if mesh is not None:
        shardings = nnx.to_pure_dict(sharding.state_shardings(state, mesh))
    else:
        device = SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, nnx.to_pure_dict(state))
    target = abstract_like(nnx.to_pure_dict(state), shardings)
    nnx.replace_by_pure_dict(state, restore_params(directory, target))
    return nnx.merge(graphdef, state)


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of ``tree`` carrying ``shardings`` (a matching pytree)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )
