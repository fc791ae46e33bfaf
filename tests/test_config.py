"""Typed configs from YAML and dotted overrides, with errors that name the field."""

import dataclasses
import enum
import re

import pytest

from pairuni_jax.config import ConfigError, apply_overrides, build, load_yaml, to_dict


class Mode(enum.Enum):
    A = "a"
    B = "b"


@dataclasses.dataclass(frozen=True)
class Inner:
    size: int = 2
    ratio: float = 0.5
    mode: Mode = Mode.A

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"size must be >= 1, got {self.size}")


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str = "x"
    inner: Inner = dataclasses.field(default_factory=Inner)
    dims: tuple[int, ...] = (1, 2)
    limit: float | None = None


def test_build_nested_with_overrides_and_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: run\ninner:\n  size: 3\n  mode: b\ndims: [4, 5]\n")
    data = apply_overrides(load_yaml(path), ["inner.ratio=1", "limit=2.5"])
    cfg = build(Outer, data)
    assert cfg == Outer(
        name="run", inner=Inner(size=3, ratio=1.0, mode=Mode.B), dims=(4, 5), limit=2.5
    )
    assert build(Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "data,message",
    [
        ({"inner": {"sise": 3}}, "inner: unknown key(s) ['sise']"),
        ({"inner": {"size": "big"}}, "inner.size: expected int"),
        ({"inner": {"mode": "c"}}, "inner.mode: 'c' is not one of ['a', 'b']"),
        ({"inner": {"size": 0}}, "inner: size must be >= 1"),
        ({"dims": 3}, "dims: expected a list"),
    ],
)
def test_build_errors_name_the_field(data, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build(Outer, data)


def test_bad_override_and_yaml(tmp_path):
    with pytest.raises(ConfigError, match="expected key.path=value"):
        apply_overrides({}, ["novalue"])
    (tmp_path / "bad.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_yaml(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
