"""The slice catalogue: chips, device and host counts of a target slice, and its TPU topology.

A slice is named as Google Cloud names it (``v5e-64``, ``v5p-16``, ``v4-8``, ``v6e-8``) or as a GPU
box (``h100-8``). With libtpu installed (the ``tpu`` extra), ``tpu_topology_devices`` gives the
compile-only devices of a TPU slice (``jax.experimental.topologies``): the TPU compiler then
compiles for that slice on any Linux x86 machine, no TPU attached.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math
import re

import jax

from pairuni_jax import flops as flops_lib
from pairuni_jax.flops import Chip

# Slice name -> (chip, JAX devices, hosts). TPU v4 and v5p names count TensorCores (two per chip,
# one JAX device per chip); v5e and v6e names count chips. Hosts hold 4 chips, except the
# single-host 8-chip v5e-8 and v6e-8 (cloud.google.com/tpu/docs/v5e, /v6e, /v5p, /v4). The TPU
# topology strings are those ``jax.experimental.topologies.get_topology_desc`` takes (as used by
# MaxText's train_compile.py).
SLICE_PATTERN = re.compile(r"^(v4|v5p|v5e|v6e|h100|h200)-(\d+)$")
TPU_TOPOLOGIES = {
    "v4-8": "v4:2x2x1",
    "v4-16": "v4:2x2x2",
    "v4-32": "v4:2x2x4",
    "v5p-8": "v5:2x2x1",
    "v5p-16": "v5:2x2x2",
    "v5p-32": "v5:2x2x4",
    "v5p-64": "v5:2x4x4",
    "v5e-4": "v5e:2x2",
    "v5e-8": "v5e:2x4",
    "v5e-16": "v5e:4x4",
    "v5e-32": "v5e:4x8",
    "v5e-64": "v5e:8x8",
    "v5e-128": "v5e:8x16",
    "v5e-256": "v5e:16x16",
    "v6e-4": "v6e:2x2",
    "v6e-8": "v6e:2x4",
    "v6e-16": "v6e:4x4",
    "v6e-32": "v6e:4x8",
    "v6e-64": "v6e:8x8",
    "v6e-256": "v6e:16x16",
}
TPU_KINDS = ("v4", "v5p", "v5e", "v6e")


class UnknownTopologyError(ValueError):
    """A ``--topology`` that names no slice this catalogue knows."""


class LibtpuMismatchError(ValueError):
    """The installed libtpu is not the one the installed jax was released with."""


class LibtpuBusyError(ValueError):
    """Another process on this machine holds libtpu."""


@dataclasses.dataclass(frozen=True)
class Slice:
    """A target slice: its chip, its number of chips (JAX devices) and hosts."""

    name: str
    chip: Chip
    chips: int
    hosts: int

    @classmethod
    def parse(cls, name: str) -> Slice:
        """``v5e-64``, ``v5p-16``, ``v4-8``, ``v6e-8``, ``h100-8``, ``h200-1``."""
        match = SLICE_PATTERN.match(name)
        if not match:
            raise UnknownTopologyError(
                f"--topology {name!r}: expected <chip>-<size> with chip one of "
                f"v4, v5p, v5e, v6e, h100, h200 (e.g. v5e-64, v5p-16, h100-8)"
            )
        kind, size = match.group(1), int(match.group(2))
        if kind in TPU_KINDS and name not in TPU_TOPOLOGIES:
            known = ", ".join(n for n in TPU_TOPOLOGIES if n.startswith(f"{kind}-"))
            raise UnknownTopologyError(f"--topology {name!r}: no such {kind} slice; known: {known}")
        chip = flops_lib.CHIPS[kind]
        chips = size // 2 if kind in ("v4", "v5p") else size
        if chips < 1:
            raise UnknownTopologyError(f"--topology {name!r}: no whole chip in {size} cores")
        if kind in ("h100", "h200"):
            hosts = math.ceil(chips / 8)
        elif kind in ("v5e", "v6e") and chips <= 8:
            hosts = 1
        else:
            hosts = math.ceil(chips / 4)
        return cls(name, chip, chips, hosts)


def libtpu_mismatch(libtpu_version: str, jax_requirements: list[str]) -> str | None:
    """Why ``libtpu_version`` does not fit jax's ``tpu`` extra (its ``Requires-Dist`` lines), or
    None when it does (or when jax pins no libtpu)."""
    from packaging.requirements import Requirement

    for line in jax_requirements:
        requirement = Requirement(line)
        if requirement.name != "libtpu" or requirement.marker is None:
            continue
        if not requirement.marker.evaluate({"extra": "tpu"}):
            continue
        if requirement.specifier.contains(libtpu_version, prereleases=True):
            return None
        wanted = f"libtpu{requirement.specifier}"
        return (
            f"libtpu {libtpu_version} is installed, but jax {jax.__version__} (jaxlib "
            f"{importlib.metadata.version('jaxlib')}) was released with {wanted}: the TPU "
            f"compiler would compile and then fail reading the program back. Install the "
            f"matching one: pip install '{wanted}' (or pip install -e '.[tpu]')"
        )
    return None


def libtpu_installed() -> bool:
    """Whether libtpu (the TPU compiler) can be imported here."""
    try:
        import libtpu  # noqa: F401
    except ImportError:
        return False
    return True


def tpu_topology_devices(target: Slice) -> list[jax.Device] | None:
    """The compile-only devices of a TPU slice when libtpu is installed, else None.

    Raises ``LibtpuMismatchError`` before compiling anything when the installed libtpu is not
    the one jax pins."""
    if target.name not in TPU_TOPOLOGIES or not libtpu_installed():
        return None
    problem = libtpu_mismatch(
        importlib.metadata.version("libtpu"), importlib.metadata.requires("jax") or []
    )
    if problem:
        raise LibtpuMismatchError(problem)
    from jax.experimental import topologies

    # v4 and v5p chips hold two TensorCores that their TPU VMs present as one JAX device
    # ("megacore"); libtpu's compile-only topology presents them as two unless told.
    options = {"chip_config_name": "megacore"} if target.chip.name in ("v4", "v5p") else {}
    try:
        topology = topologies.get_topology_desc(
            TPU_TOPOLOGIES[target.name], platform="tpu", **options
        )
    except jax.errors.JaxRuntimeError as e:
        if "lockfile" not in str(e):
            raise
        raise LibtpuBusyError(
            "another process on this machine holds libtpu (/tmp/libtpu_lockfile). Wait for it, "
            "or, when that process only compiles too, set ALLOW_MULTIPLE_LIBTPU_LOAD=1"
        ) from None
    devices = list(topology.devices)
    if len(devices) != target.chips:
        raise UnknownTopologyError(
            f"--topology {target.name}: libtpu's {TPU_TOPOLOGIES[target.name]} has "
            f"{len(devices)} devices, the slice {target.chips} chips"
        )
    return devices
