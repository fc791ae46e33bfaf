"""The plan as a text table, as JSON, and the advice printed when the step does not fit."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from pairuni_jax.flops import GIB
from pairuni_jax.plan.model import Plan, StepRefused
from pairuni_jax.rollout.layout import DecodeLayout
from pairuni_jax.run_config import RunConfig

TEMPORARIES = "temporaries (activations, KV caches, gradients)"


def _size(n: float) -> str:
    """Bytes in GiB, or MiB below 1 GiB, right-aligned in 11 columns."""
    return f"{n / GIB:7.2f} GiB" if n >= GIB else f"{n / 2**20:7.2f} MiB"


def _flop(n: float) -> str:
    """FLOPs in TFLOP, or GFLOP below 1 TFLOP, right-aligned in 13 columns."""
    return f"{n / 1e12:7.2f} TFLOP" if n >= 1e12 else f"{n / 1e9:7.2f} GFLOP"


def _hms(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m"


def format_plan(plan: Plan) -> str:
    """The plan as a text table."""
    c, m = plan.config, plan.memory
    r = c.grpo.rollout
    mesh = ", ".join(f"{k}={v}" for k, v in plan.mesh_shape.items())
    lines = [
        f"pairuni plan: {plan.target}, {plan.num_devices} devices, mesh {mesh}",
        f"  model: {plan.sources['model']}; reward: {plan.sources['reward']}",
        f"  compiler: {plan.platform}; decode layout: {plan.layout.value}"
        + (" (auto)" if r.layout is DecodeLayout.AUTO else ""),
        f"  dtype {c.model.dtype}, param_dtype {c.model.param_dtype}, remat {c.model.remat}; "
        f"{plan.global_pairs} pairs x ({r.num_und_rollouts} answers of <= {r.max_new_tokens} "
        f"tokens + {r.num_gen_rollouts} images); micro_batches {c.grpo.micro_batches}, "
        f"inner_iterations {c.grpo.inner_iterations}",
        "",
        "memory per device",
    ]
    lines += [f"  {name:<52}{_size(size)}" for name, size in plan.memory_rows().items()]
    lines += [
        f"    {'of which the ' + side + ' KV cache (analytic)':<50}{_size(size)}"
        for side, size in plan.kv_cache.items()
    ]
    lines.append(
        f"    {'of which the decode-layout weights (analytic)':<50}{_size(plan.decode_copy)}"
    )
    lines.append(f"  {'generated code':<52}{_size(m.generated_code_size_in_bytes)}")
    total = f"  {'total':<52}{_size(plan.total_bytes)}"
    if plan.hbm_bytes is not None:
        chip = plan.chip.name if plan.chip else "the device"
        verdict = "fits" if plan.fits else "DOES NOT FIT"
        total += (
            f" of {_size(plan.hbm_bytes).strip()} on {chip} "
            f"({100 * plan.total_bytes / plan.hbm_bytes:.0f}%): {verdict}"
        )
    lines.append(total)
    lines.append(
        f"  memory_analysis() bytes: arguments {m.argument_size_in_bytes}, outputs "
        f"{m.output_size_in_bytes}, aliased {m.alias_size_in_bytes}, temporaries "
        f"{m.temp_size_in_bytes}, code {m.generated_code_size_in_bytes}"
    )

    a, n = plan.analytic, plan.num_devices
    counts = plan.compiled_counts
    flop_rows = {
        "rollout: answers (prefill + decode)": a.answer_prefill + a.answer_decode,
        "rollout: images (prefill + decode)": a.image_prefill + a.image_decode,
        "rewards: VQ decode + HPS": a.rewards,
        "KL reference forwards": a.reference,
        "training (forward + backward)": a.training,
        "model FLOPs": a.model,
        "recomputed in the backward (remat)": a.recompute,
    }
    lines += ["", f"{'FLOPs per step, analytic':<54}{'per device':>13}{'all devices':>15}"]
    lines += [
        f"  {name:<52}{_flop(value / n)}  {_flop(value)}"
        for name, value in flop_rows.items()
        if value or name != "KL reference forwards"
    ]
    lines += [
        "compiled program, per device (loops x trip counts)",
        f"  {'matmul FLOPs: rollout (sampling, KL reference)':<52}{_flop(counts.flops['rollout'])}",
        f"  {'matmul FLOPs: rewards (VQ decode + HPS)':<52}{_flop(counts.flops['rewards'])}",
        f"  {'matmul FLOPs: the gradient (forward + backward)':<52}"
        f"{_flop(counts.flops['training'])}",
        f"  {'collective bytes: rollout / rewards / gradient':<52}"
        f"{_size(counts.collective_bytes['rollout'])} / "
        f"{_size(counts.collective_bytes['rewards']).strip()} / "
        f"{_size(counts.collective_bytes['training']).strip()}",
        *(
            f"  {'per decoded ' + side[:-1] + ' (one decode step, all rows)':<52}"
            f"{_size(t.collective_bytes)} in {t.collectives:.0f} collectives"
            for side, t in plan.decode_traffic.items()
        ),
        f"  (cost_analysis() counts each loop body once: {_flop(plan.cost_analysis_flops).strip()}"
        + (
            f"; {counts.unknown_loops} loops of unknown trip count counted "
            f"{max(r.max_new_tokens - 1, 1)} times each)"
            if counts.unknown_loops
            else ")"
        ),
        f"  tokens per step: {plan.tokens['sampled']} sampled, {plan.tokens['trained']} "
        f"through the training forward per inner iteration",
    ]
    if plan.platform == "cpu" and c.model.dtype == "bf16":
        lines.append(
            "  (compiled by XLA:CPU, which runs bf16 matmuls in fp32: its collective bytes and "
            "temporaries can be up to twice a TPU's)"
        )
    seconds = plan.step_seconds()
    if seconds is not None:
        step = sum(total for total, _ in seconds.values())
        chip = plan.chip
        lines += [
            "",
            f"projected step on {chip.name}: {chip.peak_flops / 1e12:.0f} TFLOP/s bf16 at MFU "
            f"{plan.mfu:.2f}, {chip.hbm_bandwidth / 1e9:.0f} GB/s HBM, "
            f"{chip.ici_bandwidth / 1e9:.0f} GB/s ICI",
        ]
        for phase, (total, bounds) in seconds.items():
            parts = ", ".join(f"{k} {v:.2f} s" for k, v in bounds.items())
            lines.append(f"  {phase:<52}{total:9.2f} s   (at least: {parts})")
        lines.append(
            f"  {'step':<52}{step:9.2f} s   {c.steps} steps: {_hms(step * c.steps)}; "
            f"{plan.tokens['sampled'] / step / n:.0f} sampled tokens/s per chip"
        )
    faster = faster_decode(plan)
    if faster is not None:
        lines.append(
            f"  faster: grpo.rollout.layout=replicated (the decode loops read a replicated copy "
            f"instead of gathering weights per token): about {_size(faster).strip()} "
            f"({100 * faster / plan.hbm_bytes:.0f}%): fits"
        )
    lines.append(
        f"\nlowered in {plan.seconds['lower']:.1f} s, compiled in {plan.seconds['compile']:.1f} s"
    )
    return "\n".join(lines)


def faster_decode(plan: Plan) -> int | None:
    """The bytes per device the step would take with the ``replicated`` decode layout (estimated
    from the table: the decode copy swapped), when the step fits with the ``train`` layout, its
    decode loops move weights between devices, and the replicated copy would fit too; else None.

    ``auto`` keeps the copy within a quarter of HBM (it decides before any compile); a plan
    knows the step's own footprint."""
    if plan.layout is not DecodeLayout.TRAIN or not plan.fits or plan.replicated_copy is None:
        return None
    if not any(t.collective_bytes for t in plan.decode_traffic.values()):
        return None
    total = plan.total_bytes - plan.decode_copy + plan.replicated_copy
    return total if total <= plan.hbm_bytes else None


def fixes(plan: Plan) -> list[tuple[str, int]]:
    """Settings whose saving can be estimated from the plan alone, with the total bytes per
    device each would give (the other settings move the temporaries by amounts only a compile
    tells)."""
    c, args, total = plan.config, plan.arguments, plan.total_bytes
    state = sum(
        args.get(k, 0)
        for k in ("trainable parameters", "frozen parameters", "reference parameters")
    )
    optimizer = args.get("optimizer state", 0)
    out = []
    if c.model.param_dtype == "fp32":
        # With LoRA the frozen base is stored in model.lora.base_dtype whatever param_dtype says.
        halved = state - args.get("frozen parameters", 0) if c.model.lora else state
        out.append(
            (
                "model.param_dtype=bf16 (halves parameters and Adam moments)",
                total - (halved + optimizer) // 2,
            )
        )
    if plan.layout is not DecodeLayout.TRAIN and plan.decode_copy:
        out.append(
            (
                "grpo.rollout.layout=train (no decode copy; the decode loops gather weights per token)",
                total - plan.decode_copy,
            )
        )
    if c.model.lora is None:
        # The trained weights become a frozen bf16 base; Adam, the reference copy and (not
        # counted here) the full-size gradient among the temporaries go.
        trained = args.get("trainable parameters", 0)
        stored = trained // 2 if c.model.param_dtype == "fp32" else trained
        saved = trained - stored + optimizer + args.get("reference parameters", 0)
        out.append(
            (
                "model.lora.rank=16 (LoRA: a frozen bf16 base, only adapters in Adam; the full "
                "gradient leaves the temporaries too, not counted here)",
                total - saved,
            )
        )
    if args.get("reference parameters"):
        out.append(
            ("grpo.loss.kl_beta=0 (no reference copy)", total - args["reference parameters"])
        )
    sharded = state + optimizer + args.get("reward model (HPS, letter table)", 0)
    fsdp = plan.mesh_shape["fsdp"]
    out.append(
        (
            f"mesh.fsdp={2 * fsdp} on a slice twice the size (parameters, optimizer and reward "
            "model over twice the devices)",
            total - sharded // 2,
        )
    )
    return out


def _knobs(c: RunConfig) -> dict[str, list[str]]:
    """The settings that shrink each line of the memory table."""
    knobs = {
        "trainable parameters": ["mesh.fsdp (shard parameters over more devices)"],
        "frozen parameters": ["mesh.fsdp (shard the frozen towers over more devices)"],
        "reference parameters": ["mesh.fsdp"],
        "optimizer state": ["mesh.fsdp (shard the optimizer state over more devices)"],
        "reward model (HPS, letter table)": [
            "mesh.fsdp (shards the reward model too)",
            "reward.dtype=bf16",
        ],
        TEMPORARIES: [
            f"grpo.micro_batches={2 * c.grpo.micro_batches} (smaller activation slices)",
            "grpo.rollout.num_und_rollouts / num_gen_rollouts or data.pairs_per_host (fewer "
            "rollouts per step: smaller KV caches and activations)",
            "mesh.data / mesh.fsdp (split the rollout rows over more devices)",
        ],
    }
    if c.model.remat != "full":
        knobs[TEMPORARIES].insert(0, "model.remat=full (recompute activations in the backward)")
    if c.model.dtype != "bf16":
        knobs[TEMPORARIES].insert(0, "model.dtype=bf16 (bf16 KV cache and activations)")
    return knobs


def advice(plan: Plan) -> str:
    """Why the step does not fit, what would make it fit, and the settings that would help."""
    knobs = _knobs(plan.config)
    lines = [
        f"does not fit: {_size(plan.total_bytes).strip()} per device, "
        f"{_size(plan.hbm_bytes).strip()} available."
    ]
    estimated = fixes(plan)
    if estimated:
        lines.append("Each of these alone, estimated from the table:")
        for knob, total in estimated:
            verdict = "fits" if total <= plan.hbm_bytes else "still does not fit"
            lines.append(
                f"  {knob}: about {_size(total).strip()} "
                f"({100 * total / plan.hbm_bytes:.0f}%): {verdict}"
            )
    lines.append("Biggest consumers:")
    for name, size in plan.consumers()[:3]:
        lines.append(f"  {name}: {_size(size).strip()}")
        for knob in knobs.get(name, []):
            lines.append(f"    try {knob}")
    return "\n".join(lines)


def plan_json(plan: Plan) -> dict[str, Any]:
    """The plan as plain JSON values (bytes and FLOPs per device unless named global)."""
    a, n, counts = plan.analytic, plan.num_devices, plan.compiled_counts
    seconds = plan.step_seconds()
    memory = dict(plan.memory_rows())
    memory["generated code"] = plan.memory.generated_code_size_in_bytes
    memory["total"] = plan.total_bytes
    return {
        "target": plan.target,
        "compiler": plan.platform,
        "devices": n,
        "mesh": plan.mesh_shape,
        "global_pairs": plan.global_pairs,
        "decode_layout": plan.layout.value,
        "sources": plan.sources,
        "hbm_bytes": plan.hbm_bytes,
        "fits": plan.fits,
        "memory_bytes": memory,
        "memory_bytes_analytic": {
            "kv_cache": plan.kv_cache,
            "decode_layout_weights": plan.decode_copy,
            "replicated_decode_layout_weights": plan.replicated_copy,
        },
        "total_bytes_with_replicated_decode": faster_decode(plan),
        "flops": {
            "analytic": {
                "per_device": True,
                "model": a.model / n,
                "remat": a.recompute / n,
                "rollout": a.rollout / n,
                "training": a.training / n,
                "phases": {k: v / n for k, v in dataclasses.asdict(a).items()},
            },
            "compiled": dict(counts.flops),
            "cost_analysis": plan.cost_analysis_flops,
        },
        "collective_bytes": {
            **counts.collective_bytes,
            "per_decoded_token": {
                side: t.collective_bytes for side, t in plan.decode_traffic.items()
            },
        },
        "collectives": {
            **counts.collectives,
            "per_decoded_token": {side: t.collectives for side, t in plan.decode_traffic.items()},
        },
        "loops": [
            {
                "op_name": loop.op_name,
                "trips": loop.trips,
                "trip_count_source": loop.source,
                "per_trip": dataclasses.asdict(loop.per_trip),
            }
            for loop in counts.loops
        ],
        "tokens": plan.tokens,
        "step_seconds": None
        if seconds is None
        else {
            "total": sum(total for total, _ in seconds.values()),
            **{phase: {"total": total, **bounds} for phase, (total, bounds) in seconds.items()},
        },
        "mfu": plan.mfu,
        "seconds": plan.seconds,
    }


def write_json(plan: Plan | StepRefused, path: str | Path) -> None:
    values = refusal_json(plan) if isinstance(plan, StepRefused) else plan_json(plan)
    Path(path).write_text(json.dumps(values, indent=1) + "\n")


def format_refusal(refused: StepRefused) -> str:
    """The report of a step the compiler refused: what is known of its memory, the compiler's
    words, and the settings that shrink the temporaries."""
    hbm = refused.hbm_bytes
    lines = [f"plan for {refused.target}, mesh {refused.mesh_shape}: the compiler refused the step"]
    lines.append("memory per device (what is known):")
    for name, size in refused.arguments.items():
        lines.append(f"  {name:<56} {_size(size)}")
    if refused.temporaries is not None:
        lines.append(f"  {TEMPORARIES:<56} {_size(refused.temporaries)}  (the compiler's figure)")
    total = refused.total_bytes_at_least
    available = f", {_size(hbm).strip()} available" if hbm else ""
    lines.append(f"does not fit: at least {_size(total).strip()} per device{available}.")
    lines.append(f"compiler: {refused.message.strip()}")
    lines.append(
        "Settings that shrink the temporaries (each needs a new plan to tell by how much):"
    )
    knobs = _knobs(refused.config)[TEMPORARIES]
    if refused.config.model.lora is None:
        knobs.append(
            "model.lora.rank=16 (LoRA: no full-size gradient, Adam moments only for adapters)"
        )
    lines.extend(f"  try {knob}" for knob in knobs)
    return "\n".join(lines)


def refusal_json(refused: StepRefused) -> dict[str, Any]:
    """A refused step as plain JSON values (bytes per device)."""
    return {
        "target": refused.target,
        "compiler": refused.platform,
        "mesh": refused.mesh_shape,
        "hbm_bytes": refused.hbm_bytes,
        "fits": False,
        "compiler_refused": refused.message.strip(),
        "memory_bytes": {
            **refused.arguments,
            TEMPORARIES: refused.temporaries,
            "total_at_least": refused.total_bytes_at_least,
        },
    }
