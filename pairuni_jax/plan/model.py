"""The plan of one step: compile it for a mesh, then read memory, FLOPs, collectives and time.

``make_plan`` lowers and compiles the abstract step (``abstract_run``) for a mesh over the target
devices: fake CPU devices (any count), or a real TPU topology's compile-only devices. Then:

- memory per device from ``compiled.memory_analysis()``: the arguments split by what they hold
  (parameters, optimizer state, reward model, batch), the outputs that do not alias a donated
  argument, and the temporaries (activations, the rollout KV caches and decode-layout weights,
  gradients); the analytic sizes of the KV caches and of the decode copy are shown as parts of
  the temporaries;
- FLOPs per step: the analytic model count (``flops.step_flops``) split into rollout and
  training, and the matmul FLOPs the compiler emitted per device (``hlo.count_program``), split
  by whether an op belongs to the gradient;
- the bytes each device moves in collectives per step, and per decoded token in the answer and
  image decode loops (bytes and number of collectives per loop iteration);
- a projected step time: compute-bound parts at ``mfu`` × the chip's peak bf16 FLOP/s, the
  rollout decode loops no faster than reading the weights and the KV cache from HBM each token.

Compiled on CPU, the memory numbers are XLA:CPU's (no TPU layout padding, different fusion, bf16
matmuls run in fp32); with a TPU topology they are the TPU compiler's.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Any

import jax
import jax.numpy as jnp

from pairuni_jax import flops as flops_lib
from pairuni_jax import sharding
from pairuni_jax import train as train_lib
from pairuni_jax.flops import Chip
from pairuni_jax.plan.abstract_run import build_abstract_run
from pairuni_jax.plan.hlo import Loop, ProgramCounts, count_program
from pairuni_jax.rollout import cost as rollout_cost
from pairuni_jax.rollout import layout as rollout_layout
from pairuni_jax.run_config import RunConfig

# ``op_name`` scopes of the decode loops (``jax.named_scope`` in ``rollout.text`` / ``image``).
DECODE_SCOPES = {"answers": "answer_decode", "images": "image_decode"}


class MeshMismatchError(ValueError):
    """A mesh whose axis sizes do not multiply to the target's device count."""


# "... the total memory required for HLO temporaries (43.32G) exceeds available HBM (30.75G)."
_REFUSED_TEMPORARIES = re.compile(r"HLO temporaries \(([\d.]+)([KMGT])\)")


class StepRefused(Exception):
    """The compiler refused the step for want of memory: the TPU compiler does when the
    temporaries alone exceed HBM (XLA:CPU never does). Holds what is known of the footprint:
    ``arguments`` (bytes per device by group, from the lowering) and ``temporaries`` (bytes per
    device the compiler reported, XLA's binary units; None if its message names none)."""

    def __init__(
        self,
        config: RunConfig,
        target: str,
        platform: str,
        mesh_shape: dict,
        arguments: dict,
        hbm_bytes: int | None,
        message: str,
    ):
        super().__init__(message)
        self.config, self.target, self.mesh_shape = config, target, mesh_shape
        self.platform = platform  # of the devices compiled for, as Plan.platform
        self.arguments = arguments
        self.hbm_bytes, self.message = hbm_bytes, message
        found = _REFUSED_TEMPORARIES.search(message)
        self.temporaries = (
            round(float(found[1]) * 1024 ** (1 + "KMGT".index(found[2]))) if found else None
        )

    @property
    def total_bytes_at_least(self) -> int:
        return sum(self.arguments.values()) + (self.temporaries or 0)


@dataclasses.dataclass(frozen=True)
class DecodeTraffic:
    """Per device and decoded token (one iteration of a decode loop, all rows together)."""

    collective_bytes: float
    collectives: float


def decode_traffic(loops: tuple[Loop, ...]) -> dict[str, DecodeTraffic]:
    """Collective bytes and ops per iteration of the answer and the image decode loops (the
    image loops averaged over their segments, weighted by their trip counts)."""
    out = {}
    for side, scope in DECODE_SCOPES.items():
        mine = [loop for loop in loops if f"/{scope}/" in loop.op_name]
        trips = sum(loop.trips for loop in mine)
        if not trips:
            continue
        moved = sum(loop.trips * loop.per_trip.collective_bytes["rollout"] for loop in mine)
        ops = sum(loop.trips * loop.per_trip.collectives["rollout"] for loop in mine)
        out[side] = DecodeTraffic(moved / trips, ops / trips)
    return out


@dataclasses.dataclass
class Plan:
    """What ``pairuni plan`` prints (bytes per device, FLOPs per step, seconds)."""

    config: RunConfig
    target: str
    chip: Chip | None
    hbm_bytes: int | None
    num_devices: int
    platform: str  # of the devices compiled for: "tpu" or "cpu"
    mesh_shape: dict[str, int]
    global_pairs: int
    sources: dict[str, str]
    layout: rollout_layout.DecodeLayout  # the decode layout the step was built with
    arguments: dict[str, int]  # bytes per device by group
    memory: Any  # compiled.memory_analysis()
    kv_cache: dict[str, int]  # analytic bytes per device: answers, images
    decode_copy: int  # analytic bytes per device of the decode-layout weights
    replicated_copy: int | None  # the same for layout=replicated; None: its rows do not split
    analytic: flops_lib.StepFlops  # global
    tokens: dict[str, int]
    compiled_counts: ProgramCounts  # per device
    decode_traffic: dict[str, DecodeTraffic]  # per device and decoded token
    cost_analysis_flops: float  # XLA's own count (loop bodies once)
    decode_bytes: dict[str, float]  # HBM bytes per device the decode loops read at least
    mfu: float
    seconds: dict[str, float]  # lower, compile

    @property
    def total_bytes(self) -> int:
        m = self.memory
        return (
            m.argument_size_in_bytes
            + m.output_size_in_bytes
            - m.alias_size_in_bytes
            + m.temp_size_in_bytes
            + m.generated_code_size_in_bytes
        )

    @property
    def fits(self) -> bool | None:
        return None if self.hbm_bytes is None else self.total_bytes <= self.hbm_bytes

    def memory_rows(self) -> dict[str, int]:
        """The memory table: the argument groups, the unaliased outputs, the temporaries."""
        m = self.memory
        rows = dict(self.arguments)
        rows["outputs not aliased to the donated state"] = (
            m.output_size_in_bytes - m.alias_size_in_bytes
        )
        rows["temporaries (activations, KV caches, gradients)"] = m.temp_size_in_bytes
        return rows

    def consumers(self) -> list[tuple[str, int]]:
        """Every line of the memory table, largest first."""
        return sorted(self.memory_rows().items(), key=lambda kv: -kv[1])

    def step_seconds(self) -> dict[str, tuple[float, dict[str, float]]] | None:
        """Projected seconds of the rollout and training phases (None without a chip): each the
        largest of its lower bounds, compute (at ``mfu`` of peak; a decode loop no faster than
        reading the weights and KV cache from HBM every token) and collectives (the bytes the
        compiled program moves, at the chip's full ICI bandwidth)."""
        if self.chip is None:
            return None
        chip, a = self.chip, self.analytic
        rate = chip.peak_flops * self.mfu * self.num_devices
        decode = sum(
            max(flop / rate, self.decode_bytes[side] / chip.hbm_bandwidth)
            for side, flop in (("answers", a.answer_decode), ("images", a.image_decode))
        )
        collectives = self.compiled_counts.collective_bytes
        bounds = {
            "rollout": {
                "compute and HBM": (a.rollout - a.decode) / rate + decode,
                "collectives": (collectives["rollout"] + collectives["rewards"])
                / chip.ici_bandwidth,
            },
            "training": {
                "compute": a.training / rate,
                "collectives": collectives["training"] / chip.ici_bandwidth,
            },
        }
        return {phase: (max(b.values()), b) for phase, b in bounds.items()}


def target_mesh(config: RunConfig, devices: list[jax.Device], target: str) -> jax.sharding.Mesh:
    """The config's mesh over ``devices``; a mesh that does not fit them is a named error."""
    m = config.mesh
    try:
        return sharding.make_mesh(m, devices)
    except ValueError as e:
        raise MeshMismatchError(
            f"mesh data={m.data}, fsdp={m.fsdp}, tensor={m.tensor} does not fit the "
            f"{len(devices)} devices of {target} ({e}): pass --mesh with sizes that multiply "
            f"to {len(devices)}"
        ) from None


def _decode_costs(
    config: RunConfig, run: Any, mesh_shape: dict[str, int], layout: rollout_layout.DecodeLayout
) -> tuple[dict[str, int], int, dict[str, float]]:
    """(KV-cache bytes, decode-copy bytes, HBM bytes the decode loops read) per device."""
    model, r = run.model_config, config.grpo.rollout
    dtype = config.model.dtype.dtype
    pairs = run.batch["und_input_ids"].shape[0]
    batch_ways = math.prod(mesh_shape[a] for a in rollout_layout.batch_axes(layout))
    head_ways = 1 if layout is rollout_layout.DecodeLayout.REPLICATED else mesh_shape["tensor"]
    image_tokens = model.num_generated_image_tokens
    kv = {
        "answers": rollout_cost.kv_cache_bytes(
            model.text,
            pairs * r.num_und_rollouts,
            config.data.max_und_len + r.max_new_tokens - 1,
            dtype,
            batch_ways,
            head_ways,
        ),
        "images": rollout_cost.kv_cache_bytes(
            model.text,
            2 * pairs * r.num_gen_rollouts,
            config.data.max_gen_len + image_tokens - 1,
            dtype,
            batch_ways,
            head_ways,
        ),
    }
    itemsize = jnp.dtype(dtype).itemsize
    weights = rollout_cost.loop_weight_params(model)
    steps = {"answers": r.max_new_tokens - 1, "images": image_tokens - 1}
    read = {side: steps[side] * (weights[side] * itemsize / head_ways + kv[side]) for side in steps}
    copy = rollout_layout.copy_bytes(model, layout, mesh_shape, dtype)
    return kv, copy, read


def make_plan(
    config: RunConfig,
    devices: list[jax.Device],
    *,
    target: str,
    chip: Chip | None,
    hosts: int = 1,
    hbm_bytes: int | None = None,
    mfu: float = 0.4,
) -> Plan:
    """Builds, lowers and compiles the step of ``config`` on a mesh over ``devices``."""
    mesh = target_mesh(config, devices, target)
    hbm = hbm_bytes if hbm_bytes is not None else (chip.hbm_bytes if chip else None)
    budget = dataclasses.replace(chip, hbm_bytes=hbm) if chip and hbm else chip
    run = build_abstract_run(config, mesh, hosts, budget)
    with jax.set_mesh(mesh):
        start = time.perf_counter()
        lowered = run.lower()
        lowered_at = time.perf_counter()
        try:
            compiled = lowered.compile()
        except jax.errors.JaxRuntimeError as e:
            if not str(e).startswith("RESOURCE_EXHAUSTED"):
                raise
            arguments = run.argument_bytes(lowered)
            raise StepRefused(
                config, target, devices[0].platform, dict(mesh.shape), arguments, hbm, str(e)
            ) from e
        compiled_at = time.perf_counter()
    memory = compiled.memory_analysis()
    if memory is None:
        raise RuntimeError(f"the {devices[0].platform} compiler gives no memory analysis")

    global_pairs = run.batch["und_input_ids"].shape[0]
    shapes = flops_lib.StepShapes.from_run_config(config, global_pairs)
    layout = run.step_fn.decode_layout
    kv, copy, read = _decode_costs(config, run, dict(mesh.shape), layout)
    r = config.grpo.rollout
    counts = count_program(compiled.as_text(), max(r.max_new_tokens - 1, 1))
    cost = compiled.cost_analysis()
    return Plan(
        config=config,
        target=target,
        chip=chip,
        hbm_bytes=hbm,
        num_devices=len(devices),
        platform=devices[0].platform,
        mesh_shape=dict(mesh.shape),
        global_pairs=global_pairs,
        sources=run.sources,
        layout=layout,
        arguments=run.argument_bytes(lowered),
        memory=memory,
        kv_cache=kv,
        decode_copy=copy,
        replicated_copy=rollout_layout.possible_copy_bytes(
            rollout_layout.DecodeLayout.REPLICATED,
            run.model_config,
            dict(mesh.shape),
            config.model.dtype.dtype,
            train_lib.rollout_rows(config, global_pairs),
        ),
        analytic=flops_lib.step_flops(shapes, run.model_config, run.hps_config),
        tokens=flops_lib.step_tokens(shapes, run.model_config),
        compiled_counts=counts,
        decode_traffic=decode_traffic(counts.loops),
        cost_analysis_flops=float(cost.get("flops", 0.0)) if cost else 0.0,
        decode_bytes=read,
        mfu=mfu,
        seconds={"lower": lowered_at - start, "compile": compiled_at - lowered_at},
    )
