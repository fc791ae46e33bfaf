"""Which run-config fields may change when a run resumes from its checkpoints.

Every field of the resolved config (dotted path, e.g. ``optimizer.learning_rate``) falls in one
class, by the longest matching prefix in ``FIELD_CLASSES`` (fields not listed are ``ASK``):

- ``FREE``: does not change what is computed (where files go, logging, checkpoint cadence, the
  mesh, input-pipeline parallelism, remat): may change silently.
- ``ASK``: changes the training from the resumed step on, but the checkpoint stays valid (the
  learning rate, ``steps``, sampling settings, reward weights, a moved file): refused unless the
  user names it with ``--allow-config-change FIELD`` (a section name allows all its fields).
- ``FIXED``: changes the model's structure, its frozen weights or the data order, so the
  checkpoint no longer describes this run: always refused (start a new run dir instead).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping
from typing import Any

from pairuni_jax.errors import UserError


class ChangeClass(enum.Enum):
    FREE = "free"
    ASK = "ask"
    FIXED = "fixed"


FREE, ASK, FIXED = ChangeClass.FREE, ChangeClass.ASK, ChangeClass.FIXED

FIELD_CLASSES: dict[str, ChangeClass] = {
    "run_dir": FREE,
    "distributed": FREE,
    "cluster": FREE,  # where the processes meet (a resumed cluster may use another port)
    "cluster.num_processes": FIXED,  # the rows each host reads of the global order
    "nan_policy": FREE,
    "logging": FREE,
    "checkpoint": FREE,
    "mesh": FREE,
    "model.remat": FREE,
    "data.on_error": FREE,
    "data.num_workers": FREE,
    "data.read_threads": FREE,
    "data.prefetch_batches": FREE,
    # the model's structure and its frozen weights
    "model.preset": FIXED,
    "model.init_seed": FIXED,
    "model.param_dtype": FIXED,
    "model.scan_layers": FIXED,
    "reward.init_seed": FIXED,
    "grpo.frozen_modules": FIXED,
    # the data order
    "data.pairs_per_host": FIXED,
    "data.seed": FIXED,
    "data.num_epochs": FIXED,
}
REASONS = {
    ASK: "changes the training from the resumed step on",
    FIXED: "changes the model, its frozen weights or the data order the checkpoint belongs to",
}


def field_class(field: str) -> ChangeClass:
    """The class of the dotted ``field`` (longest matching prefix of ``FIELD_CLASSES``)."""
    parts = field.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in FIELD_CLASSES:
            return FIELD_CLASSES[prefix]
    return ASK


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: nested mappings become dotted keys (reward weight
    tables too); lists and scalars stay whole."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{path}."))
        else:
            out[path] = value
    return out


@dataclasses.dataclass(frozen=True)
class FieldChange:
    field: str
    old: Any
    new: Any

    @property
    def change_class(self) -> ChangeClass:
        return field_class(self.field)

    def __str__(self) -> str:
        return f"{self.field}: {self.old!r} -> {self.new!r}"


_MISSING = "<absent>"


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[FieldChange]:
    """Every field whose value differs between two ``config.to_dict`` trees, sorted by name."""
    a, b = flatten(old), flatten(new)
    return [
        FieldChange(k, a.get(k, _MISSING), b.get(k, _MISSING))
        for k in sorted(set(a) | set(b))
        if a.get(k, _MISSING) != b.get(k, _MISSING)
    ]


class ConfigChangeError(UserError):
    """A resume whose config differs from the run's in fields that may not change."""


def check_resume(
    old: Mapping[str, Any], new: Mapping[str, Any], allowed: Iterable[str], where: str
) -> list[FieldChange]:
    """The changes from ``old`` to ``new`` (``config.to_dict`` trees) that a resume of ``where``
    accepts: ``FREE`` ones, and ``ASK`` ones named in ``allowed`` (fields or section prefixes).

    Raises ``ConfigChangeError`` naming every other change with its old and new value and what
    to do about it, or naming an ``allowed`` entry that is not a field of the config.
    """
    allowed = tuple(allowed)
    fields = set(flatten(old)) | set(flatten(new))
    for name in allowed:
        if not any(_covers(name, f) for f in fields):
            raise ConfigChangeError(
                f"--allow-config-change {name}: not a config field or section "
                f"(e.g. optimizer.learning_rate, steps, grpo.rollout)"
            )
    changes = diff(old, new)
    fixed = [c for c in changes if c.change_class is FIXED]
    asked = [
        c
        for c in changes
        if c.change_class is ASK and not any(_covers(name, c.field) for name in allowed)
    ]
    if not fixed and not asked:
        return changes
    parts = [f"the config differs from the one {where} was trained with"]
    if fixed:
        parts.append(
            f"{', '.join(map(str, fixed))} cannot change on resume ({REASONS[FIXED]}): "
            "start a new run_dir, or restore the old value"
        )
    if asked:
        names = " ".join(c.field for c in asked)
        parts.append(
            f"{', '.join(map(str, asked))} ({REASONS[ASK]}): pass "
            f"--allow-config-change {names} if you mean it"
        )
    raise ConfigChangeError("; ".join(parts))


def _covers(name: str, field: str) -> bool:
    return field == name or field.startswith(name + ".")
