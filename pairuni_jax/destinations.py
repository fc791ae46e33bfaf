"""Where a command may write: the destination rules of ``convert``, ``export`` and friends.

A destination directory

- must not be, contain or lie inside any of the command's sources (for ``export``: the run
  directory), nor be or lie inside a ``pairuni train`` run directory (except a run's ``model/``
  while it does not exist: the trainer converts a Hugging Face ``model.path`` there);
- is created new; with ``overwrite`` an existing one is replaced only when a ``pairuni`` command
  wrote it: it carries the marker file ``MARKER`` (written last, listing the entries the command
  wrote) and holds nothing else. Anything else is refused, so ``--overwrite`` never deletes what
  the user put there.

Paths are compared after resolving symlinks and ``..``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from pairuni_jax import run_dir
from pairuni_jax.errors import UserError

MARKER = ".pairuni-output.json"


class DestinationError(UserError, FileExistsError):
    """A destination the command must not write to, or not replace."""


def check(
    destination: str | Path, *, sources: Iterable[str | Path] = (), overwrite: bool = False
) -> Path:
    """Checks the rules above before any work is done; returns the resolved destination."""
    dst = Path(destination).expanduser().resolve()
    for source in sources:
        src = Path(source).expanduser().resolve()
        if dst == src:
            raise DestinationError(f"destination {destination} is the source {source}")
        if dst in src.parents:
            raise DestinationError(
                f"destination {destination} contains the source {source}: writing it would "
                "replace the source"
            )
        if src in dst.parents:
            raise DestinationError(
                f"destination {destination} lies inside the source {source}: choose a path "
                "outside it"
            )
    for path in (dst, *dst.parents):
        if run_dir.is_run_dir(path) and not (dst == path / run_dir.MODEL_DIR and not dst.exists()):
            raise DestinationError(
                f"destination {destination} is inside the pairuni train run directory {path}: "
                "choose a path outside it"
                if path != dst
                else f"destination {destination} is a pairuni train run directory"
            )
    if dst.exists() or dst.is_symlink():
        if not overwrite:
            raise DestinationError(
                f"{destination} already exists; choose a new path or pass --overwrite"
            )
        check_replaceable(dst)
    return dst


def check_replaceable(destination: Path) -> None:
    """Raises ``DestinationError`` unless ``destination`` holds only what a pairuni command
    wrote there (its ``MARKER`` lists every entry)."""
    if destination.is_symlink() or not destination.is_dir():
        raise DestinationError(
            f"--overwrite replaces only directories written by pairuni; {destination} is not one"
        )
    marker = destination / MARKER
    try:
        written = set(json.loads(marker.read_text())["entries"])
    except FileNotFoundError:
        raise DestinationError(
            f"--overwrite replaces only directories written by pairuni; {destination} has no "
            f"{MARKER}, so it is left untouched: choose a new path or remove it yourself"
        ) from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DestinationError(f"{marker}: not a pairuni output marker ({e})") from e
    foreign = sorted(p.name for p in destination.iterdir() if p.name not in written | {MARKER})
    if foreign:
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise DestinationError(
            f"--overwrite would delete {shown} in {destination}, which pairuni did not write: "
            "move them away or choose a new path"
        )


def write_marker(directory: Path, command: str) -> None:
    """Records what ``command`` wrote into ``directory`` (call last, when it is complete)."""
    entries = sorted(p.name for p in directory.iterdir() if p.name != MARKER)
    (directory / MARKER).write_text(
        json.dumps({"written_by": command, "entries": entries}, indent=1) + "\n"
    )
