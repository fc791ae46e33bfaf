"""A run directory: its lock, its config history, and what in it the trainer owns.

::

    RUN_DIR/
      train.lock        while a trainer uses the directory: {"host", "pid", "started", ...}
      config.yaml       the resolved config of the latest start (= the newest history entry)
      config_history/   config-<UTC time>.yaml: one copy per start whose config changed
      checkpoints/  metrics.jsonl  tensorboard/  samples/  model/  corrupt_checkpoints/

The lock is a file created atomically (``os.link`` of a complete temporary file), so it is never
seen half-written. A lock left by a process that is gone (same host, pid not running, or running
but started after the lock was taken) is taken over with a message; a lock held by a live
process, or by another host, is refused. On a pod only the lead host takes it.

``config.yaml`` is the trainer's only when it equals the newest ``config_history/`` entry (a run
written before the history existed counts as the trainer's when it has checkpoints): the
trainer never overwrites a ``config.yaml``, or adopts a directory with outputs, it did not write.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import uuid
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pairuni_jax import config as config_lib
from pairuni_jax import config_changes
from pairuni_jax.errors import UserError

LOCK_FILE = "train.lock"
CONFIG_FILE = "config.yaml"
HISTORY_DIR = "config_history"
CHECKPOINTS_DIR = "checkpoints"
MODEL_DIR = "model"  # a Hugging Face model.path, converted once
# What the trainer writes into a run directory (besides the lock and the history).
TRAINER_OUTPUTS = (
    CONFIG_FILE,
    CHECKPOINTS_DIR,
    "metrics.jsonl",
    "tensorboard",
    "samples",
    MODEL_DIR,
    "corrupt_checkpoints",
)


class RunDirError(UserError):
    """A run directory that cannot be used as asked (locked, or holding files of someone else)."""


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is (or was) a ``pairuni train`` run directory."""
    return (
        (path / HISTORY_DIR).is_dir()
        or (path / LOCK_FILE).is_file()
        or ((path / CHECKPOINTS_DIR).is_dir() and (path / CONFIG_FILE).is_file())
    )


# -- the lock ------------------------------------------------------------------------------------


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name may hold spaces


def _is_running(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return start is None or _process_start(pid) in (None, start)  # else: the pid was reused


class RunLock:
    """The lock of one run directory, held by this process until ``release`` (or exit)."""

    def __init__(self, path: Path, content: str):
        self.path = path
        self._content = content
        self._finalizer = weakref.finalize(self, _release, path, content)

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        """Locks ``run_dir`` (created if missing); raises ``RunDirError`` if a live trainer
        (or one on another host) holds it."""
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK_FILE
        pid = os.getpid()
        holder = {
            "host": socket.gethostname(),
            "pid": pid,
            "pid_start": _process_start(pid),
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "token": uuid.uuid4().hex,
        }
        content = json.dumps(holder) + "\n"
        for _ in range(3):
            if _create_exclusively(path, content):
                return cls(path, content)
            seen = _read_text(path)
            if seen is None:  # released meanwhile
                continue
            _check_stale(path, seen)
            _take_over(path, seen)
        raise RunDirError(f"{run_dir} is in use: could not take {path}")

    def release(self) -> None:
        self._finalizer()


def _create_exclusively(path: Path, content: str) -> bool:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(content)
    try:
        os.link(tmp, path)  # atomic, fails if the lock exists: never seen half-written
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink()


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _check_stale(path: Path, seen: str) -> None:
    """Returns when the lock ``seen`` at ``path`` is stale; raises ``RunDirError`` if held."""
    try:
        holder = json.loads(seen)
        host, pid, started = holder["host"], int(holder["pid"]), holder.get("started", "?")
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise RunDirError(
            f"{path.parent} is locked by {path}, which is not a lock this trainer wrote "
            f"({e}); delete it if no trainer uses this directory"
        ) from e
    where = f"pid {pid} on host {host} (since {started})"
    if host != socket.gethostname():
        raise RunDirError(
            f"{path.parent} is in use by {where}, see {path}; if no trainer runs there any "
            "more, delete that file"
        )
    if pid == os.getpid() or _is_running(pid, holder.get("pid_start")):
        raise RunDirError(
            f"{path.parent} is in use by {where}: two trainers must not share a run_dir "
            "(wait for it to finish, stop it, or choose another run_dir)"
        )
    print(f"taking over the stale lock {path} of {where}: that process is gone", file=sys.stderr)


def _take_over(path: Path, seen: str) -> None:
    """Moves the stale lock ``seen`` away; puts a lock back if another process took over
    first (it then holds the directory and the next attempt reports it)."""
    grave = path.with_name(f".{path.name}.stale-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return
    if grave.read_text() != seen:  # we moved a fresh lock of a racing trainer: restore it
        try:
            os.link(grave, path)
        except FileExistsError:
            pass
    grave.unlink()


def _release(path: Path, content: str) -> None:
    if _read_text(path) == content:  # never remove a lock another process holds
        path.unlink()


# -- ownership and the config history ------------------------------------------------------------


def _history(run_dir: Path) -> list[Path]:
    return sorted((run_dir / HISTORY_DIR).glob("config-*.yaml"))


def check_ownership(run_dir: Path) -> None:
    """Raises ``RunDirError`` if ``run_dir`` holds a ``config.yaml`` or outputs that the trainer
    did not write (it would overwrite or truncate them)."""
    config_file = run_dir / CONFIG_FILE
    history = _history(run_dir)
    if history:
        if config_file.exists() and config_file.read_bytes() != history[-1].read_bytes():
            raise RunDirError(
                f"{config_file} was edited or replaced since pairuni train wrote it (its copy "
                f"is {history[-1]}); it is left untouched: move it away (to train with it, "
                "pass it with --config)"
            )
        return
    if config_file.is_file() and (run_dir / CHECKPOINTS_DIR).is_dir():
        return  # a run written before the history existed
    foreign = [name for name in TRAINER_OUTPUTS if (run_dir / name).exists()]
    if foreign:
        raise RunDirError(
            f"run_dir {run_dir} holds {', '.join(foreign)}, which pairuni train did not write "
            f"(no {HISTORY_DIR}/): choose another run_dir or move them away"
        )


def saved_config(run_dir: Path) -> dict[str, Any] | None:
    """The config the run in ``run_dir`` was last started with (``config_lib.to_dict`` form),
    or None for a new run directory."""
    history = _history(run_dir)
    source = history[-1] if history else run_dir / CONFIG_FILE
    return config_lib.load_yaml(source) if source.is_file() else None


def record_config(run_dir: Path, config: dict[str, Any]) -> Path | None:
    """Writes ``config`` as ``config.yaml`` and a dated history copy when it differs from the
    saved one; returns the history file written, or None when nothing changed."""
    if saved_config(run_dir) == config and _history(run_dir):
        return None
    text = yaml.safe_dump(config, sort_keys=False)
    history_dir = run_dir / HISTORY_DIR
    history_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    entry = history_dir / f"config-{stamp}.yaml"
    _write_atomically(entry, text)
    _write_atomically(run_dir / CONFIG_FILE, text)
    return entry


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)


def has_checkpoints(run_dir: Path) -> bool:
    directory = run_dir / CHECKPOINTS_DIR
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def start(
    run_dir: Path,
    config: dict[str, Any],
    allowed_changes: Sequence[str],
    normalize: Callable[[dict[str, Any]], dict[str, Any]] = lambda saved: saved,
) -> RunLock:
    """Takes the run directory for a trainer: locks it, refuses files the trainer did not
    write, checks a resume's ``config`` (``config_lib.to_dict`` form) against the saved one
    before anything else is written, then records it. ``normalize`` fills a saved config's
    missing fields with their defaults. Returns the held lock."""
    lock = RunLock.acquire(run_dir)
    try:
        check_ownership(run_dir)
        saved = saved_config(run_dir)
        if saved is not None and has_checkpoints(run_dir):
            accepted = config_changes.check_resume(
                normalize(saved), config, allowed_changes, str(run_dir)
            )
            if accepted:
                print(
                    "resuming with a changed config: " + ", ".join(map(str, accepted)),
                    file=sys.stderr,
                )
        entry = record_config(run_dir, config)
        if entry is not None and saved is not None:
            print(f"config changed: the previous ones are in {entry.parent}", file=sys.stderr)
    except BaseException:
        lock.release()
        raise
    return lock


def start_on_lead(
    run_dir: Path,
    config: dict[str, Any],
    allowed_changes: Sequence[str],
    normalize: Callable[[dict[str, Any]], dict[str, Any]] = lambda saved: saved,
) -> RunLock | None:
    """``start`` on the lead host (the only one that holds the lock and writes); on a pod every
    host learns whether it succeeded and raises when it did not. Returns the lead's lock."""
    import jax
    from jax.experimental import multihost_utils

    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = start(run_dir, config, allowed_changes, normalize)
        except Exception as e:  # raised below, after the other hosts know
            error = e
    if jax.process_count() > 1:
        failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
        if failed and error is None:
            raise RunDirError(f"the lead host refused to start the run in {run_dir}; see its log")
    if error is not None:
        raise error
    return lock
