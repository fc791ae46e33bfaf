"""Logical axis names, the rules that map them to mesh axes, and mesh helpers.

Every parameter is created with logical axis names (``axes("embed", "mlp")``); the one table
``LOGICAL_AXIS_RULES`` maps those names to the mesh axes ``data``, ``fsdp`` and ``tensor``. A new
parallelism layout edits the table, never the model.

Logical names used across the project:

=============  ==========================================================
``batch``      examples (activations only)
``length``     sequence positions (activations only)
``embed``      the model width of the LLM (and of other towers)
``mlp``        the hidden width of an MLP
``heads``      attention heads (query) ; ``kv_heads`` key/value heads
``head_dim``   per-head width
``vocab``      text vocabulary or image codebook rows
``layers``     stacked layers (scan axis)
``conv_in``    input channels of a convolution; ``conv_out`` output channels
``norm``       the feature axis of a normalisation layer
``lora_rank``  the rank axis of LoRA adapters (A [in, rank], B [rank, out])
=============  ==========================================================
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("conv_out", None),  # VQ/CLIP convs are small and end in 3 channels: replicate
    ("length", None),
    ("head_dim", None),
    ("layers", None),
    ("conv_in", None),
    ("norm", None),
    ("cache_length", None),
    ("lora_rank", None),  # adapters are small: A and B follow their kernel's other axis
)


def parse_mesh_flag(text: str) -> dict[str, int]:
    """A ``--mesh`` flag's axis sizes: ``"data=1,fsdp=-1"`` -> ``{"data": 1, "fsdp": -1}`` (only
    the axes named; -1 as in ``MeshConfig``)."""
    sizes = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or name not in MESH_AXES or not value.lstrip("-").isdigit():
            raise ValueError(f"--mesh {text!r}: expected data=D,fsdp=F,tensor=T (any of them)")
        sizes[name] = int(value)
    return sizes


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the three mesh axes; their product must equal the number of devices used.

    ``-1`` on at most one axis means "all remaining devices".
    """

    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    def shape(self, num_devices: int) -> tuple[int, int, int]:
        sizes = [self.data, self.fsdp, self.tensor]
        if sizes.count(-1) > 1:
            raise ValueError(f"MeshConfig: at most one axis may be -1, got {self}")
        if any(s == 0 or s < -1 for s in sizes):
            raise ValueError(f"MeshConfig: axis sizes must be positive or -1, got {self}")
        known = 1
        for s in sizes:
            if s != -1:
                known *= s
        if -1 in sizes:
            if num_devices % known:
                raise ValueError(
                    f"MeshConfig {self}: {num_devices} devices do not divide by {known}"
                )
            sizes[sizes.index(-1)] = num_devices // known
        if sizes[0] * sizes[1] * sizes[2] != num_devices:
            raise ValueError(
                f"MeshConfig {self} needs {sizes[0] * sizes[1] * sizes[2]} devices, {num_devices} available"
            )
        return tuple(sizes)


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a ``(data, fsdp, tensor)`` mesh over ``devices`` (default: all devices)."""
    devices = list(devices) if devices is not None else jax.devices()
    shape = config.shape(len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def axes(*names: str | None) -> dict[str, Any]:
    """Variable metadata that tags a parameter with logical axis names (one per dimension)."""
    return {"out_sharding": tuple(names), "eager_sharding": False}


# The rules ``constrain`` maps activations with: the training rules, or a rollout's decode
# layout inside ``activation_rules`` (``rollout.layout``).
_ACTIVATION_RULES = contextvars.ContextVar("activation_rules", default=LOGICAL_AXIS_RULES)


def logical_to_spec(names: Sequence[str | None]) -> PartitionSpec:
    """Maps logical axis names to a mesh ``PartitionSpec`` with the active rules
    (``LOGICAL_AXIS_RULES`` unless inside ``activation_rules``)."""
    return nn.logical_to_mesh_axes(tuple(names), _ACTIVATION_RULES.get())


@contextlib.contextmanager
def activation_rules(rules: tuple[tuple[str, Any], ...]) -> Iterator[None]:
    """While tracing inside this block, ``constrain`` maps logical names with ``rules``."""
    token = _ACTIVATION_RULES.set(rules)
    try:
        yield
    finally:
        _ACTIVATION_RULES.reset(token)


def state_shardings(state: nnx.State, mesh: Mesh) -> nnx.State:
    """``NamedSharding`` for every leaf of an (abstract or concrete) NNX state."""
    with nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        return nnx.get_named_sharding(state, mesh)


def constrain(x: jax.Array, *names: str | None) -> jax.Array:
    """Sharding constraint on an activation by logical names, under the mesh in context.

    Outside a mesh context (``jax.set_mesh``) this returns ``x`` unchanged: single-device code
    needs no annotation. Tests run the sharded path on a (2, 4) mesh of fake CPU devices.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names))


def create_sharded(factory: Callable[[], nnx.Module], mesh: Mesh) -> nnx.Module:
    """Creates a module with every parameter born sharded on ``mesh``.

    The module is traced abstractly first, so no device ever holds the whole unsharded model
    (what makes 7B initialisation possible on a pod).
    """
    abstract = nnx.eval_shape(factory)
    shardings = state_shardings(nnx.state(abstract), mesh)

    def init_state() -> nnx.State:
        return nnx.state(factory())

    with jax.set_mesh(mesh):
        state = jax.jit(init_state, out_shardings=shardings)()
    graphdef = nnx.graphdef(abstract)
    return nnx.merge(graphdef, state)


def shard_module(module: nnx.Module, mesh: Mesh) -> nnx.Module:
    """Moves an existing module's parameters onto ``mesh`` following their logical axes."""
    graphdef, state = nnx.split(module)
    shardings = state_shardings(state, mesh)
    return nnx.merge(graphdef, jax.device_put(state, shardings))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def tree_shardings(tree: Any, mesh: Mesh) -> Any:
    """Shardings for any pytree holding NNX variables (params, optimizer moments, train state).

    A variable tagged with logical axes is sharded by the rules; every other leaf (step counters,
    scalars) is replicated. The result mirrors ``tree``, ready for ``jax.device_put``.
    """

    def one(x: Any) -> Any:
        if isinstance(x, nnx.Variable):
            names = x.get_metadata().get("out_sharding")
            spec = logical_to_spec(names) if names else PartitionSpec()
            return x.replace(NamedSharding(mesh, spec))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))
