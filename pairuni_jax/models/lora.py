"""LoRA adapters on the Janus policy, added with qwix (``model.lora`` in a run config).

Shape letters: L stacked layers, I a matrix's input width, O its output width, R the rank.

qwix (``LoraProvider`` + ``apply_lora_to_model``) intercepts the ``dot_general`` of each targeted
``nnx.Linear`` and adds ``(x @ A @ B) · alpha / rank``; A [I, R] (he-uniform) and B [R, O]
(zeros) live beside the kernel as ``kernel_lora_a`` / ``kernel_lora_b`` (``nnx.LoRAParam``), so
at initialisation the adapted model computes exactly what the base model does. With a quantised
``base_dtype`` qwix stores the targeted kernels quantised (QLoRA) and runs on them.

How this fits the project's layers:

- qwix intercepts only while the ``__call__`` of the module it adapted runs. Janus has several
  entry points (the LLM forward, ``text_logits``, ``image_logits``), so adapters are added per
  *entry module* holding targets: the decoder layer stack, ``lm_head`` and ``generation_head``.
- The decoder layers are stacked on a ``layers`` axis and run under ``lax.scan``. qwix creates an
  adapter by running the module once and setting it on the module that owns the op; inside
  ``lax.scan`` that is a per-layer copy (and qwix's shared RNG would become unsliceable scan
  state), so the adapter would be lost. The creation pass therefore runs the stack under
  ``nnx.vmap``, which stacks the new parameters on the ``layers`` axis (an independent A per
  layer). After that the scan and the sampling loops slice adapters like any layer parameter.
- A module path is its attribute names from the Janus root joined by ``/``, with no layer index
  (``language_model/layers/self_attn/q_proj`` names the stacked projection of every layer).
"""

from __future__ import annotations

import dataclasses
import enum
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import qwix
from flax import nnx

from pairuni_jax import sharding
from pairuni_jax.models.janus import Janus

Array = jax.Array
ModulePath = tuple[str, ...]

DEFAULT_TARGETS = r"language_model/layers/(self_attn/[qkvo]_proj|mlp/(gate|up|down)_proj)"
"""The LLM's attention and MLP projections; add ``|generation_head/.*`` for the image head."""

STACKED_ENTRY: ModulePath = ("language_model", "layers")
HEAD_ENTRIES: tuple[ModulePath, ...] = (("lm_head",), ("generation_head",))
RANK_AXIS = "lora_rank"  # the logical name of the rank axis of A and B (see sharding.py)


class LoraError(ValueError):
    """A LoRA setting that does not fit the policy: the message names the field and module."""


class BaseDType(enum.StrEnum):
    """How the frozen base is stored: ``fp32``, ``bf16``, or quantised by qwix (QLoRA:
    ``int8``, ``int4``, ``nf4``; the targeted kernels only, every other base parameter bf16)."""

    FP32 = "fp32"
    BF16 = "bf16"
    INT8 = "int8"
    INT4 = "int4"
    NF4 = "nf4"

    @property
    def qtype(self) -> Any:
        """qwix's ``weight_qtype`` (None for the float storages)."""
        return {
            BaseDType.INT8: jnp.int8,
            BaseDType.INT4: jnp.int4,
            BaseDType.NF4: "nf4",
        }.get(self)

    @property
    def float_dtype(self) -> np.dtype:
        """The dtype of the base parameters that are not quantised."""
        return np.dtype(np.float32) if self is BaseDType.FP32 else np.dtype(jnp.bfloat16)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters on the policy (``model.lora``); only they are trained.

    Attributes:
        rank: R, the inner width of each adapter (1 to the smaller side of every target).
        alpha: the adapter output is scaled by alpha / rank (PEFT's ``lora_alpha``).
        targets: a regular expression that must match the whole path of each adapted
            ``nnx.Linear`` (e.g. ``language_model/layers/mlp/up_proj``); the default is the
            LLM's attention and MLP projections. Targets may lie in the decoder layers,
            ``lm_head`` and ``generation_head``.
        base_dtype: storage of the frozen base (see ``BaseDType``); adapters stay in the model's
            ``param_dtype``.
        tile_size: for a quantised base: one scale per ``tile_size`` inputs of a kernel
            (subchannel quantisation, e.g. 128); None: one scale per output channel.
        seed: draws the A matrices.
    """

    rank: int = 16
    alpha: float = 32.0
    targets: str = DEFAULT_TARGETS
    base_dtype: BaseDType = BaseDType.BF16
    tile_size: int | None = None
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "base_dtype", BaseDType(self.base_dtype))
        if self.rank < 1:
            raise LoraError(f"rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise LoraError(f"alpha must be > 0, got {self.alpha}")
        try:
            re.compile(self.targets)
        except re.error as e:
            raise LoraError(f"targets {self.targets!r} is not a regular expression: {e}") from e
        if self.tile_size is not None and (self.tile_size < 1 or self.base_dtype.qtype is None):
            raise LoraError(
                f"tile_size {self.tile_size} needs a quantised base_dtype and a positive size"
            )

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


# -- finding the targets -------------------------------------------------------------------------


def path_name(path: ModulePath) -> str:
    return "/".join(map(str, path))


def _entry_of(path: ModulePath) -> ModulePath | None:
    for entry in (STACKED_ENTRY, *HEAD_ENTRIES):
        if path[: len(entry)] == entry:
            return entry
    return None


def find_targets(model: Janus, config: LoraConfig) -> dict[ModulePath, nnx.Linear]:
    """The ``nnx.Linear`` modules of ``model`` whose path ``config.targets`` matches.

    Raises ``LoraError`` when none matches, when one lies outside the decoder layers and the
    heads, or when ``config.rank`` exceeds a side of a matched kernel.
    """
    linears = {
        tuple(map(str, path)): module
        for path, module in nnx.iter_modules(model)
        if isinstance(module, nnx.Linear)
    }
    matched = {p: m for p, m in linears.items() if re.fullmatch(config.targets, path_name(p))}
    if not matched:
        adaptable = sorted({_generic(p) for p in linears if _entry_of(p)})
        raise LoraError(
            f"model.lora.targets {config.targets!r} matches no Linear layer of the policy; layers that "
            f"can take adapters: {', '.join(adaptable)}"
        )
    if outside := sorted(path_name(p) for p in matched if _entry_of(p) is None):
        raise LoraError(
            f"model.lora.targets {config.targets!r} matches {', '.join(outside)}: adapters go on "
            f"{path_name(STACKED_ENTRY)}/..., lm_head or generation_head/..."
        )
    for path, module in matched.items():
        sides = (module.in_features, module.out_features)
        if config.rank > min(sides):
            raise LoraError(
                f"model.lora.rank {config.rank} is larger than a side of {path_name(path)} "
                f"(kernel {sides[0]} × {sides[1]})"
            )
    return matched


def _generic(path: ModulePath) -> str:
    """A path with numeric segments (``nnx.List`` items) written as ``\\d+``."""
    return "/".join(r"\d+" if s.isdigit() else s for s in path)


# -- adding the adapters -------------------------------------------------------------------------


def add_adapters(model: Janus, config: LoraConfig, mesh: jax.sharding.Mesh | None = None) -> Janus:
    """``model`` with adapters on ``config.targets``; the base stored in ``config.base_dtype``.

    The adapters take the dtype of the base at this point (the model's ``param_dtype``) and are
    sharded on ``mesh`` by their logical axes (the kernel's, with ``lora_rank`` for R; no mesh:
    on the first device).
    The model is changed in place and returned.
    """
    adapt(model, config)
    # Committed placement: a jitted step's outputs are committed, so uncommitted adapters would
    # make the step's second call compile the whole program again.
    lora_state = nnx.state(model, nnx.LoRAParam)
    placement = jax.devices()[0] if mesh is None else sharding.state_shardings(lora_state, mesh)
    nnx.update(model, jax.device_put(lora_state, placement))
    return model


def adapt(model: Janus, config: LoraConfig) -> Janus:
    """``model`` with adapters on ``config.targets`` and its base in ``config.base_dtype``, left
    where the arrays are (``add_adapters`` places them). Traceable: ``pairuni plan`` runs it
    under ``nnx.eval_shape`` to plan an adapted policy without materialising it."""
    targets = find_targets(model, config)
    rngs = nnx.Rngs(config.seed)
    for entry in (STACKED_ENTRY, *HEAD_ENTRIES):
        relative = [p[len(entry) :] for p in targets if _entry_of(p) == entry]
        if relative:
            _adapt_entry(model, entry, relative, config, rngs)
    _name_rank_axes(model)
    _store_base(model, config.base_dtype.float_dtype)
    return model


def _adapt_entry(
    model: Janus,
    entry: ModulePath,
    relative: list[ModulePath],
    config: LoraConfig,
    rngs: nnx.Rngs,
) -> None:
    """Replaces the module at ``entry`` by its qwix-adapted copy, created by one forward."""
    provider = qwix.LoraProvider(
        module_path="|".join(re.escape(path_name(p)) for p in relative),
        rank=config.rank,
        alpha=config.alpha,
        weight_qtype=config.base_dtype.qtype,
        tile_size=config.tile_size,
    )
    parent = _module_at(model, entry[:-1])
    # qwix runs the module once to create the adapters; that pass is driven here (see the
    # module docstring), with the RNG qwix draws A from set on every submodule meanwhile.
    adapted = qwix.apply_lora_to_model(
        getattr(parent, entry[-1]), provider, rngs=rngs, skip_nnx_init=True
    )
    adapted.set_attributes(qwix_rngs=rngs, disable_quant_stats_update=True)
    text = model.config.text
    x = jnp.zeros((1, 1, text.hidden_size), model.dtype)
    if entry == STACKED_ENTRY:
        rope = jnp.zeros((1, 1, text.head_dim), model.dtype)
        mask = jnp.ones((1, 1, 1), bool)

        @nnx.split_rngs(splits=text.num_layers)
        @nnx.vmap(in_axes=(0, None), transform_metadata={nnx.PARTITION_NAME: "layers"})
        def create(layer, x):
            layer(x, rope, rope, mask, None, None)

    else:

        def create(head, x):
            head(x)

    nnx.jit(create)(adapted, x)  # one program, not one per op (seconds, not a minute, eagerly)
    adapted.set_attributes(qwix_rngs=None, disable_quant_stats_update=False)
    setattr(parent, entry[-1], adapted)


def _module_at(model: nnx.Module, path: ModulePath) -> Any:
    for name in path:
        model = getattr(model, name)
    return model


def _name_rank_axes(model: Janus) -> None:
    """qwix leaves the rank axis of A ([..., I, R]) and B ([..., R, O]) unnamed: call it
    ``lora_rank`` so the rules table places it."""
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.LoRAParam):
            names = list(var.get_metadata().get("out_sharding") or (None,) * var.ndim)
            names[-1 if path[-1].endswith("_lora_a") else -2] = RANK_AXIS
            var.set_metadata("out_sharding", tuple(names))


def _store_base(model: Janus, dtype: np.dtype) -> None:
    """Every floating base parameter (not an adapter, not part of a quantised kernel) →
    ``dtype``. A quantised kernel's scales stay as qwix made them (fp32): in bf16 they would
    round every weight the forward computes with, and those of the merged export with them."""

    def quantised(path: tuple, _) -> bool:  # the qvalue / scale leaves of a qwix QArray
        return "array" in path

    base = nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam), nnx.Not(quantised)))

    def cast(state):
        return jax.tree.map(
            lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, state
        )

    if not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(base)):
        # Concrete arrays: one program (not one per leaf) that keeps every leaf where it is.
        cast = jax.jit(cast, out_shardings=jax.tree.map(lambda x: x.sharding, base))
    nnx.update(model, cast(base))


# -- using and reading an adapted model ----------------------------------------------------------


def is_adapted(model: nnx.Module) -> bool:
    return bool(jax.tree.leaves(nnx.state(model, nnx.LoRAParam)))


def compute_view(model: Janus) -> Janus:
    """``model`` with its adapters cast to the compute dtype (``model.dtype``), as ``nnx.Linear``
    casts its kernel: qwix adds the adapter output to the layer's unchanged, so an fp32 adapter
    in a bf16 model would turn the activations fp32. A new module (``model`` itself when it has
    no adapters); ``model`` is left as it is, so this is safe under any trace."""
    if not is_adapted(model):
        return model
    graphdef, adapters, rest = nnx.split(model, nnx.LoRAParam, ...)
    return nnx.merge(graphdef, jax.tree.map(lambda x: x.astype(model.dtype), adapters), rest)


def adapter_matrices(model: Janus) -> dict[ModulePath, tuple[Array, Array]]:
    """(A [..., I, R], B [..., R, O]) of every adapted Linear by module path (stacked layers
    carry a leading L axis)."""
    out = {}
    for path, module in nnx.iter_modules(model):
        if isinstance(module, nnx.Linear) and hasattr(module, "kernel_lora_a"):
            out[tuple(map(str, path))] = (module.kernel_lora_a[...], module.kernel_lora_b[...])
    return out


def dense_kernel(module: nnx.Linear) -> Array:
    """The kernel [..., I, O] of a Linear as floats (a quantised base dequantised)."""
    if isinstance(module.kernel, nnx.Variable):
        return module.kernel[...]
    quantised = jax.tree.map(
        lambda v: v[...], module.kernel.array, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )
    return qwix.dequantize(quantised)


def merged_params(model: Janus, config: LoraConfig, dtype: Any = jnp.float32) -> dict[str, Any]:
    """The base parameters with every adapter merged, W + (alpha / rank) · A @ B, as the pure
    dict of an unadapted Janus (what ``nnx.to_pure_dict(nnx.state(Janus(...)))`` holds), every
    floating leaf in ``dtype``."""
    base = nnx.to_pure_dict(nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))))
    for path, (a, b) in adapter_matrices(model).items():
        node = base
        for name in path:
            node = node[name]
        kernel = dense_kernel(_module_at(model, path)).astype(jnp.float32)
        delta = jnp.matmul(a.astype(jnp.float32), b.astype(jnp.float32)) * config.scale
        node["kernel"] = kernel + delta
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, base
    )
