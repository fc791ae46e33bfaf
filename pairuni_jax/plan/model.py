"""The plan of one step: compile it for a mesh, then read memory, FLOPs, collectives and time.

``make_plan`` lowers and compiles the abstract step (``abstract_run``) for a mesh over the target
devices: fake CPU devices (any count), or a real TPU topology's compile-only devices. Then:

- memory per device from ``compiled.memory_analysis()``: the arguments split by what they hold
  (parameters, optimizer state, reward model, batch), the outputs that do not alias a donated
  argument, and the temporaries (activations, the rollout KV caches, gradients); the analytic
  KV-cache size is shown as part of the temporaries;
- FLOPs per step: the analytic model count (``flops.step_flops``) split into rollout and
  training, and the matmul FLOPs XLA compiled per device (``hlo.count_program``), split by
  whether an op belongs to the gradient;
- the bytes each device moves in collectives per step (same loop accounting);
- a projected step time: compute-bound parts at ``mfu`` × the chip's peak bf16 FLOP/s, the
  rollout decode loops no faster than reading the weights and the KV cache from HBM each token.

Compiled on CPU, the memory numbers are XLA:CPU's (no TPU layout padding, different fusion);
with a TPU topology they are the TPU compiler's.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import jax.numpy as jnp

from pairuni_jax import flops as flops_lib
from pairuni_jax import sharding
from pairuni_jax import train as train_lib
from pairuni_jax.flops import Chip
from pairuni_jax.models.janus import JanusConfig
from pairuni_jax.plan.abstract_run import build_abstract_run
from pairuni_jax.plan.hlo import ProgramCounts, count_program
from pairuni_jax.run_config import RunConfig


def _ways(mesh: jax.sharding.Mesh, names: tuple[str, ...], size: int) -> int:
    """How many ways ``size`` rows split over mesh axes ``names`` (1 when they do not divide)."""
    ways = math.prod(mesh.shape[n] for n in names)
    return ways if size % ways == 0 else 1


def kv_cache_bytes(
    model: JanusConfig, rows: int, slots: int, dtype: Any, mesh: jax.sharding.Mesh
) -> int:
    """Per-device bytes of one rollout KV cache (``models.llama.KVCache``): keys and values
    [L, rows, slots, K, D] sharded over (batch, kv_heads), plus the valid mask."""
    t = model.text
    batch_ways = _ways(mesh, ("data", "fsdp"), rows)
    head_ways = _ways(mesh, ("tensor",), t.num_kv_heads)
    kv = 2 * t.num_layers * rows * slots * t.num_kv_heads * t.head_dim
    return kv * jnp.dtype(dtype).itemsize // (batch_ways * head_ways) + rows * slots // batch_ways


@dataclasses.dataclass
class Plan:
    """What ``pairuni plan`` prints (bytes per device, FLOPs per step, seconds)."""

    config: RunConfig
    target: str
    chip: Chip | None
    hbm_bytes: int | None
    num_devices: int
    platform: str  # of the devices compiled for
    mesh_shape: dict[str, int]
    global_pairs: int
    sources: dict[str, str]
    arguments: dict[str, int]  # bytes per device by group
    memory: Any  # compiled.memory_analysis()
    kv_cache: dict[str, int]  # analytic bytes per device: answers, images
    analytic: flops_lib.StepFlops  # global
    tokens: dict[str, int]
    compiled_counts: ProgramCounts  # per device
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

    def consumers(self) -> list[tuple[str, int]]:
        """Every line of the memory table, largest first."""
        m = self.memory
        rows = dict(self.arguments)
        rows["outputs not aliased to the donated state"] = (
            m.output_size_in_bytes - m.alias_size_in_bytes
        )
        rows["temporaries (activations, KV caches, gradients)"] = m.temp_size_in_bytes
        return sorted(rows.items(), key=lambda kv: -kv[1])

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
                "collectives": collectives["rollout"] / chip.ici_bandwidth,
            },
            "training": {
                "compute": a.training / rate,
                "collectives": collectives["training"] / chip.ici_bandwidth,
            },
        }
        return {phase: (max(b.values()), b) for phase, b in bounds.items()}


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
    mesh = sharding.make_mesh(config.mesh, devices)
    run = build_abstract_run(config, mesh, hosts)
    with jax.set_mesh(mesh):
        start = time.perf_counter()
        lowered = run.lower()
        lowered_at = time.perf_counter()
        compiled = lowered.compile()
        compiled_at = time.perf_counter()
    memory = compiled.memory_analysis()
    if memory is None:
        raise RuntimeError(f"the {devices[0].platform} compiler gives no memory analysis")

    model = run.model_config
    global_pairs = run.batch["und_input_ids"].shape[0]
    shapes = flops_lib.StepShapes.from_run_config(config, global_pairs)
    r = config.grpo.rollout
    dtype = train_lib.DTYPES[config.model.dtype]
    b_u = global_pairs * r.num_und_rollouts
    b_g = global_pairs * r.num_gen_rollouts
    image_tokens = model.num_generated_image_tokens
    kv = {
        "answers": kv_cache_bytes(
            model, b_u, config.data.max_und_len + r.max_new_tokens - 1, dtype, mesh
        ),
        "images": kv_cache_bytes(
            model, 2 * b_g, config.data.max_gen_len + image_tokens - 1, dtype, mesh
        ),
    }
    t = model.text
    param_bytes = jnp.dtype(train_lib.DTYPES[config.model.param_dtype]).itemsize
    tensor = mesh.shape["tensor"]
    layers = t.num_layers * flops_lib.llm_layer_params(t)
    text_head = t.hidden_size * t.vocab_size
    image_head = t.hidden_size * (t.hidden_size + model.vq.num_embeddings)
    decode_bytes = {
        "answers": (r.max_new_tokens - 1)
        * ((layers + text_head) * param_bytes / tensor + kv["answers"]),
        "images": (image_tokens - 1)
        * ((layers + image_head) * param_bytes / tensor + kv["images"]),
    }
    cost = compiled.cost_analysis()
    return Plan(
        config=config,
        target=target,
        chip=chip,
        hbm_bytes=hbm_bytes if hbm_bytes is not None else (chip.hbm_bytes if chip else None),
        num_devices=len(devices),
        platform=devices[0].platform,
        mesh_shape=dict(mesh.shape),
        global_pairs=global_pairs,
        sources=run.sources,
        arguments=run.argument_bytes(lowered),
        memory=memory,
        kv_cache=kv,
        analytic=flops_lib.step_flops(shapes, model, run.hps_config),
        tokens=flops_lib.step_tokens(shapes, model),
        compiled_counts=count_program(compiled.as_text(), max(r.max_new_tokens - 1, 1)),
        cost_analysis_flops=float(cost.get("flops", 0.0)) if cost else 0.0,
        decode_bytes=decode_bytes,
        mfu=mfu,
        seconds={"lower": lowered_at - start, "compile": compiled_at - lowered_at},
    )
